"""Time reading a 100,000-row bad-case CSV into a DumpRequest (target: well under 2 s).

Run: python bench/badcase_load.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from logitsdump.badcase import read_bad_case_request, read_result_csv

ROWS = 100_000


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bad.csv"
        header = "key,queries,input_token_ids,output_token_ids,test_result,golden_result,pass\n"
        body = "".join(f'{i},question {i}?,"[1, 2, 3]","[4, 5]",A,B,Wrong\n' for i in range(ROWS, 0, -1))
        path.write_text(header + body, encoding="utf-8")
        start = time.perf_counter()
        request = read_bad_case_request(path)
        keys_s = time.perf_counter() - start
        start = time.perf_counter()
        table = read_result_csv(path)
        table_s = time.perf_counter() - start
    print(
        f"{ROWS} rows: keys -> request {keys_s:.3f} s ({len(request.indices)} cases); "
        f"whole table {table_s:.3f} s ({len(table.rows)} rows); ratio {table_s / keys_s:.2f}"
    )


if __name__ == "__main__":
    main()
