"""What the CLI prints fits a terminal of 80 columns."""

from rich.console import Console

from flows.cli.common import compact_table
from pipeline.reports.tables import timings_table


def test_stage_timings_print_as_one_table_row_within_80_columns():
    timings = {"compare": 0.31, "prepare": 3.21, "embed": 35.2, "index": 1.94, "evaluate": 1.2, "publish": 0.4,
               "promote": 0.1}
    console = Console(width=80, record=True)
    console.print(compact_table(timings_table(timings)))
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    header = next(line for line in lines if "compare" in line)
    values = next(line for line in lines if "35.2" in line)
    assert header.split() == list(timings) and values.split() == ["0.3", "3.2", "35.2", "1.9", "1.2", "0.4", "0.1"]
