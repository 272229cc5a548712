"""Dumps what an outside reader sees in a Tessera warehouse: every Parquet
file of every table (so every version still on disk), every column cast to
text, one value per line; and the DuckDB type of each column of each
table's current version, as `#type <table> <column> <type>` lines.

usage: dump_warehouse.py WAREHOUSE_DIR

The delta extension is loaded from the `duckdb-extension-delta` wheel's own
file: nothing is downloaded.
"""

import os
import sys

import duckdb
import duckdb_extension_delta


def main(args: list[str]) -> None:
    if len(args) != 1:
        sys.exit(__doc__)
    root = args[0]
    extension = os.path.join(
        os.path.dirname(duckdb_extension_delta.__file__), "extensions", f"v{duckdb.__version__}", "delta.duckdb_extension"
    )
    con = duckdb.connect()
    con.execute(f"LOAD '{extension}'")
    for directory, subdirs, files in os.walk(root):
        if "_delta_log" in subdirs:
            quoted = directory.replace("'", "''")
            for name, type_, *_ in con.execute(f"DESCRIBE SELECT * FROM delta_scan('{quoted}')").fetchall():
                print(f"#type {os.path.relpath(directory, root)} {name} {type_}")
        for f in files:
            if not f.endswith(".parquet"):
                continue
            path = os.path.join(directory, f).replace("'", "''")
            relation = con.sql(f"SELECT * FROM read_parquet('{path}')")
            columns = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in relation.columns)
            for row in con.sql(f"SELECT {columns} FROM read_parquet('{path}')").fetchall():
                for value in row:
                    if value is not None:
                        print(value)


if __name__ == "__main__":
    main(sys.argv[1:])
