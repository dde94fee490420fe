"""`face-pipelines`: experiment workflows for data scientists, next to `kedro run`.

    face-pipelines diff A B [--report out.md] [--repo PATH]
        A, B: a rendered dataset folder, or rev:<git-rev> (the DVC-tracked synthetic dataset at that
        revision of --repo). Prints the side-by-side table and the cards' lineages stage by stage
        (differing parameters, inputs whose content differs, code); writes a markdown report with
        sample grids.
    face-pipelines compare [--experiment NAME] [--filter EXPR] [--tracking-uri URI] [--plot out.png]
                           [--csv out.csv] [--markdown out.md] [--param KEY ...] [--all]
        MLflow runs: the parameters that differ between them vs verification accuracy.

Bad input (not a dataset, unknown revision, no runs, ...) prints one message and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from face_pipelines.errors import FacePipelinesError

PROG = "face-pipelines"
DEFAULT_DIFF_REPORT = "data/08_reporting/dataset_diff.md"
EXIT_BAD_INPUT = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Experiment workflows: dataset diffs and MLflow run comparison."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{diff,compare}")
    _add_diff_command(sub)
    _add_compare_command(sub)
    return parser


def _add_diff_command(sub) -> None:
    diff = sub.add_parser(
        "diff",
        help="semantic diff of two synthetic dataset versions",
        description="Compare two synthetic dataset versions: card measures, what made each set "
        "stage by stage (parameters, the content of checkpoints, features and plan, code) and "
        "sample grids. A and B are dataset folders or rev:<git-rev>.",
    )
    diff.add_argument("a", metavar="A", help="dataset folder or rev:<git-rev> (e.g. rev:HEAD~1)")
    diff.add_argument("b", metavar="B", help="dataset folder or rev:<git-rev>")
    diff.add_argument(
        "--report",
        metavar="MD",
        default=DEFAULT_DIFF_REPORT,
        help=f"markdown report to write; sample grids go next to it (default {DEFAULT_DIFF_REPORT})",
    )
    diff.add_argument(
        "--repo",
        metavar="PATH",
        default=".",
        help="git + DVC repository that rev: versions are read from",
    )


def _add_compare_command(sub) -> None:
    cmp_ = sub.add_parser(
        "compare",
        help="compare MLflow runs: varying parameters vs verification accuracy",
        description="List MLflow runs with the parameters that differ between them and their "
        "verification accuracy per benchmark.",
    )
    cmp_.add_argument(
        "--experiment", metavar="NAME", default="face_pipelines", help="MLflow experiment name"
    )
    cmp_.add_argument(
        "--filter",
        dest="filter_string",
        metavar="EXPR",
        default=None,
        help="MLflow filter, e.g. \"params.recognizer.train.method = 'topofr'\"",
    )
    cmp_.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=None,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    cmp_.add_argument(
        "--plot", metavar="PNG", default=None, help="write a grouped-bar PNG of accuracy per run"
    )
    cmp_.add_argument("--csv", default=None, help="write the table as CSV")
    cmp_.add_argument(
        "--markdown", metavar="MD", default=None, help="write the table as a markdown file"
    )
    cmp_.add_argument(
        "--param",
        dest="params",
        metavar="KEY",
        action="append",
        default=[],
        help="parameter key to show even if it does not vary (repeatable)",
    )
    cmp_.add_argument(
        "--tar-at-far",
        dest="tar_at_far",
        metavar="FAR",
        action="append",
        default=[],
        help="add TAR at this FAR per recognizer and benchmark, e.g. 1e-3 (repeatable; evaluate "
        "logs 1e-4, 1e-3, 1e-2, 1e-1 where the benchmark has enough impostor pairs)",
    )
    cmp_.add_argument(
        "--all",
        dest="include_unevaluated",
        action="store_true",
        help="also list runs without evaluation metrics (e.g. synth runs)",
    )


def _run_diff(args: argparse.Namespace) -> int:
    from face_pipelines.reporting.dataset_diff import diff_datasets

    diff = diff_datasets(args.a, args.b, repo=args.repo)
    print(diff.to_text())
    report = diff.write_report(args.report)
    print(f"\nreport: {report}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from face_pipelines.io.atomic import atomic_path, write_text_atomic
    from face_pipelines.reporting.run_compare import (
        compare_runs,
        comparison_figure,
        comparison_markdown,
        format_comparison,
    )

    df = compare_runs(
        experiment=args.experiment,
        filter_string=args.filter_string,
        tracking_uri=args.tracking_uri,
        params=args.params,
        include_unevaluated=args.include_unevaluated,
        tar_at_far=args.tar_at_far,
    )
    print(f"{len(df)} run(s) in experiment {args.experiment!r} ({df.attrs['tracking_uri']})")
    print(format_comparison(df))
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        print(f"csv: {path}")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, comparison_markdown(df) + "\n")
        print(f"markdown: {path}")
    if args.plot:
        from face_pipelines.reporting.figures import plt

        path = Path(args.plot)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = comparison_figure(df)
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")
        finally:
            plt.close(fig)
        print(f"plot: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `face-pipelines` console script; returns the exit code."""
    args = _build_parser().parse_args(argv)
    handler = {"diff": _run_diff, "compare": _run_compare}[args.command]
    try:
        return handler(args)
    except (FacePipelinesError, OSError) as exc:
        # Bad input is the user's to fix: one line naming it, no traceback.
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
