"""What the benchmark reports share (report.py, zerohop_report.py,
protocols_report.py): number formatting and ratios from the same run."""


def fmt(v):
    """A number at the precision a table wants: 3 significant-ish digits."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmts(values):
    return ", ".join(fmt(v) for v in values) or "-"


def per_run_ratio(by_run, t, ref, key):
    """t's value / ref's value for each run both have: the margin run by run.
    by_run: target -> metric -> run -> value."""
    a, b = by_run.get(t, {}).get(key, {}), by_run.get(ref, {}).get(key, {})
    return [a[r] / b[r] for r in sorted(a) if b.get(r)]
