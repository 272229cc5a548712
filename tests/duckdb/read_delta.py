"""Reads Delta tables with DuckDB's delta extension, an independent reader
of the Delta protocol, and writes each one's rows to a Parquet file for the
Rust test to compare with its own reading.

usage: read_delta.py TABLE_URL OUT.parquet [TABLE_URL OUT.parquet ...]

The extension is loaded from the `duckdb-extension-delta` wheel's own file:
nothing is downloaded.
"""

import os
import sys

import duckdb
import duckdb_extension_delta


def main(args: list[str]) -> None:
    if not args or len(args) % 2:
        sys.exit(__doc__)
    extension = os.path.join(
        os.path.dirname(duckdb_extension_delta.__file__), "extensions", f"v{duckdb.__version__}", "delta.duckdb_extension"
    )
    if not os.path.exists(extension):
        sys.exit(f"no delta extension for DuckDB {duckdb.__version__} at {extension}: install the matching duckdb-extension-delta")
    con = duckdb.connect()
    con.execute(f"LOAD '{extension}'")
    con.execute("SET TimeZone = 'UTC'")
    for table, out in zip(args[::2], args[1::2]):
        quoted = table.replace("'", "''")
        target = out.replace("'", "''")
        con.execute(f"COPY (SELECT * FROM delta_scan('{quoted}')) TO '{target}' (FORMAT parquet)")
        print(table, con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0])


if __name__ == "__main__":
    main(sys.argv[1:])
