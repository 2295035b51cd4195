from infra.benches.instructions import instructions_of

PART = """# callgrind format
version: 1
creator: callgrind-3.19.0
events: Ir
summary: {summary}
fn=(1) main
0 {totals}
totals: {totals}
"""


def test_the_count_sums_the_totals_of_every_part_callgrind_dumped(tmp_path):
    # callgrind_control's switches can make it dump more than one part: out, out.1, ...
    (tmp_path / "callgrind.out").write_text(PART.format(summary=0, totals=1_200))
    (tmp_path / "callgrind.out.1").write_text(PART.format(summary=0, totals=34))
    (tmp_path / "other.out").write_text(PART.format(summary=0, totals=5_000))

    assert instructions_of(tmp_path / "callgrind.out") == 1_234
