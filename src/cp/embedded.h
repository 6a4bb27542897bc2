/* Files compiled into wrenn-cp by embed.py: migrations per engine, the OpenAPI document and the
 * docs page. */
#ifndef WRENN_CP_EMBEDDED_H
#define WRENN_CP_EMBEDDED_H

typedef struct cp_migration {
    int version; /* 0 ends the table */
    const char *name;
    const char *up;
    const char *down;
} cp_migration_t;

/** Migrations in ascending version order, each table ended by a zero entry. */
extern const cp_migration_t cp_migrations_sqlite[];
extern const cp_migration_t cp_migrations_postgres[];

/** GET /openapi.yaml and GET /docs bodies. */
extern const char cp_openapi_yaml[];
extern const unsigned long cp_openapi_yaml_len;
extern const char cp_docs_html[];
extern const unsigned long cp_docs_html_len;

#endif
