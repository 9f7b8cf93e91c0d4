"""The ``fashiondvc`` command: demo, paper table, plots, search."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fashiondvc.errors import FashionError, run_main


def _demo(args: argparse.Namespace) -> None:
    from fashiondvc.demo import run_demo

    run_demo(photos=args.photos, seed=args.seed)


def _search(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from fashiondvc.index import SearchIndex
    from fashiondvc.preprocess import display_name
    from fashiondvc.search import (
        Searcher,
        default_top,
        format_text,
        format_words,
        parse_where,
        rank_text,
    )
    from fashiondvc.words import parse_text

    if (args.photo is None) == (args.text is None):
        raise FashionError("search: give a photo or --text WORDS (one of the two)")
    top = args.top or default_top()
    index = SearchIndex.load(args.index)
    if args.text is not None:  # the index alone answers: no network to load
        if args.where:
            raise FashionError("--where: filters a photo query; write the words in --text")
        query = parse_text(args.text, index.labels)
        hits, matches = rank_text(index, query, top=top)
        result = {"text": args.text, "include": list(query.include),
                  "exclude": list(query.exclude), "threshold": index.threshold,
                  "matches": matches, "results": [vars(hit) for hit in hits]}
        for hit in result["results"]:
            hit["file"] = display_name(index.root / hit["path"])
            hit["path"] = display_name(hit["path"])
        print(json.dumps(result, indent=2) if args.json else format_words(result, index))
        return
    photo = Path(args.photo)
    if not photo.is_file():
        raise FashionError(f"{display_name(photo)}: no such file")
    where = parse_where(args.where, index.labels)  # fail fast, before loading the network
    searcher = Searcher.open(index, args.model)
    result = searcher.query(photo.read_bytes(), str(photo), top=top, where=where)
    if args.json:
        result.pop("embedding")
        for hit in result["results"]:
            hit["file"] = str(searcher.index.root / hit["path"])
        print(json.dumps({"photo": display_name(photo), **result}, indent=2))
    else:
        print(format_text(result, str(photo), searcher.index))


def _serve(args: argparse.Namespace) -> None:
    from fashiondvc.web import serve

    serve(args.index, args.model, host=args.host, port=args.port, top=args.top)


def _index(args: argparse.Namespace) -> None:
    import time

    from fashiondvc.index import build_index
    from fashiondvc.preprocess import display_name
    from fashiondvc.registry import open_model

    start = time.perf_counter()
    opened = open_model(args.model, args.tta, args.embedding)
    index, counts = build_index(args.model, args.images, args.out,
                                threshold=args.threshold, predictor=opened.predictor,
                                model_sha256=opened.sha256)
    print(f"index: {len(index)} photos of {display_name(args.images)} with {opened.description} -> "
          f"{args.out} in {time.perf_counter() - start:.1f}s ({counts['computed']} featurized, "
          f"{counts['reused']} reused, {counts['skipped']} skipped)")


def _promote(args: argparse.Namespace) -> None:
    from fashiondvc.mlmodel import REGISTERED_NAME
    from fashiondvc.registry import promote

    version = promote(args.experiment, args.alias)
    print(f"models:/{REGISTERED_NAME}@{args.alias} -> version {version.version} (experiment "
          f"{version.tags.get('dvc.experiment', '?')}, run {version.run_id})")


def _add_search_commands(commands: argparse._SubParsersAction) -> None:
    model_help = ("models/net.pt (default), another model file, or a registered model: "
                  "models:/fashiondvc-attributes@champion")
    search = commands.add_parser("search", help="find collection photos similar to a photo, "
                                 "or matching words")
    search.add_argument("photo", nargs="?", default=None,
                        help="a photo (JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF)")
    search.add_argument("--text", default=None, metavar="WORDS",
                        help="words instead of a photo, e.g. 'red and white stripes, no scarf'")
    search.add_argument("--top", type=int, default=None,
                        help="results to show (default: search.top in params.yaml, else 10)")
    search.add_argument("--where", default=None, metavar="ATTR[,ATTR...]",
                        help="only photos predicted to have all these attributes")
    search.add_argument("--json", action="store_true", help="print JSON")
    serve = commands.add_parser("serve", help="the search page in a local web server")
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--top", type=int, default=None, help="results per query")
    for command, handler in ((search, _search), (serve, _serve)):
        command.add_argument("--index", default="data/index", help="default data/index")
        command.add_argument("--model", default="models/net.pt", help=model_help)
        command.set_defaults(handler=handler)
    index = commands.add_parser("index", help="index a photo folder with a model file or a "
                                "registered model (the index stage does it for models/net.pt)")
    index.add_argument("--model", required=True, help=model_help)
    index.add_argument("--images", default="data/ingested/images",
                       help="photo folder (default: the ingested photos)")
    index.add_argument("--out", required=True, help="index folder, e.g. data/index-champion")
    index.add_argument("--threshold", type=_probability, default=0.5,
                       help="decision threshold of the shown attributes (default 0.5)")
    index.add_argument("--tta", choices=("none", "flip"), default=None,
                       help="test-time augmentation (default: the model's, as logged)")
    index.add_argument("--embedding", choices=("hidden", "attributes"), default=None,
                       help="what search ranks by (default: the model's, as logged)")
    index.set_defaults(handler=_index)
    promote = commands.add_parser("promote", help="point a registry alias (default champion) "
                                  "at the model registered by a DVC experiment")
    promote.add_argument("experiment", help="DVC experiment name (dvc exp show), or a version")
    promote.add_argument("--alias", default="champion", help="default champion")
    promote.set_defaults(handler=_promote)


def _probability(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}") from None
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}")
    return number


def _paper_queue(args: argparse.Namespace) -> None:
    from fashiondvc.paper import queue

    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    label_sets = [s.strip() for s in args.labels.split(",")] if args.labels else None
    queue(args.set_param, force=args.force, rows=rows, suffix=args.suffix, beyond=args.beyond,
          seeds=args.seeds, label_sets=label_sets)


def _paper_report(args: argparse.Namespace) -> None:
    from fashiondvc.paper import recipes_report, report

    if args.recipes:
        path = recipes_report(".", args.out)
        print(path.read_text())
        print(f"wrote {path} and {path.parent / 'recipes.csv'}")
        return
    path = report(".", args.out)
    print(path.read_text())
    print(f"wrote {path}, {path.with_suffix('.csv')}, {path.with_suffix('.png')} and "
          f"{path.parent / 'variants.csv'}")


def _plots_compare(args: argparse.Namespace) -> None:
    from fashiondvc.plots import compare

    for path in compare(args.revs, args.out):
        print(f"wrote {path}")


def _add_plots_commands(commands: argparse._SubParsersAction) -> None:
    plots = commands.add_parser("plots", help="PNG plots that work offline")
    plots_commands = plots.add_subparsers(dest="plots_command", required=True)
    compare = plots_commands.add_parser(
        "compare", help="per-epoch curves and per-attribute F1 of experiments, over each other")
    compare.add_argument("revs", nargs="+", metavar="REV",
                         help="two or more DVC experiment names, commits, branches, tags or "
                              "'workspace'")
    compare.add_argument("--out", default="dvc_plots/compare",
                         help="output folder (default: dvc_plots/compare, git-ignored)")
    compare.set_defaults(handler=_plots_compare)


def _track(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from fashiondvc import mlmodel
    from fashiondvc.tracking import relog

    def log_model(run) -> None:
        if args.no_model:
            return
        dataset = json.loads(Path(args.manifest).read_text())["archive_sha256"]
        mlmodel.log_model(run, args.model, dataset)

    if relog(args.metrics, args.model, args.manifest, log_model) is None:
        raise FashionError("MLflow tracking failed (see the warning above)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashiondvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the pipeline offline on a generated sample")
    demo.add_argument("--photos", type=int, default=120, help="generated photos (default 120)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)

    paper = commands.add_parser("paper", help="the paper's table g1..g14 as DVC experiments")
    paper_commands = paper.add_subparsers(dest="paper_command", required=True)
    queue = paper_commands.add_parser("queue", help="queue the 14 rows (then: dvc queue start)")
    queue.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                       help="extra override for every row, e.g. -S train.epochs=5")
    queue.add_argument("-f", "--force", action="store_true",
                       help="replace existing experiments of the same names")
    queue.add_argument("--rows", default="", help="only these rows, e.g. g2,g8")
    queue.add_argument("--suffix", default="",
                       help="appended to each name (write it --suffix=-leak)")
    queue.add_argument("--beyond", action="store_true",
                       help="queue the beyond-the-paper recipe (one per label set) instead")
    queue.add_argument("--seeds", type=int, default=1,
                       help="with --beyond: once per training seed 0..N-1 (default 1)")
    queue.add_argument("--labels", default="",
                       help="with --beyond: only these label sets, e.g. attrs20")
    queue.set_defaults(handler=_paper_queue)
    report = paper_commands.add_parser("report",
                                       help="write reports/latest/paper_table.{md,csv,png}")
    report.add_argument("--out", default="reports/latest",
                        help="output folder (default: reports/latest; the committed reference "
                             "results are in reports/real-weights)")
    report.add_argument("--recipes", action="store_true",
                        help="only the experiments beyond the paper's rows, with the mean ± sd "
                             "over seeds (recipes.md)")
    report.set_defaults(handler=_paper_report)
    _add_plots_commands(commands)
    track = commands.add_parser(
        "track", help="log the workspace's pipeline outputs to MLflow again (after a failed or "
        "unfinished run; name: $DVC_EXP_NAME or workspace@<commit>)")
    track.add_argument("--metrics", default="metrics", help="default metrics")
    track.add_argument("--model", default="models/net.pt", help="default models/net.pt")
    track.add_argument("--manifest", default="data/ingested/manifest.json",
                       help="default data/ingested/manifest.json")
    track.add_argument("--no-model", action="store_true",
                       help="do not log and register the model")
    track.set_defaults(handler=_track)
    _add_search_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    def call() -> None:
        if getattr(args, "photos", 4) < 4:
            raise FashionError("--photos: need at least 4")
        args.handler(args)

    run_main(call, name=f"fashiondvc {args.command}")
    if argv is None and args.command == "search":
        _exit_now()


def _exit_now() -> None:
    """End a ``fashiondvc search`` process without the interpreter's teardown.

    Unloading torch costs ~0.6 s of CPU at exit (bench/results.md, item 4), a fifth of a
    one-off query; the query has nothing left to clean up once its answer is flushed. Only for
    the console command (``argv is None``): a caller of `main` keeps its interpreter.
    """
    import os
    import sys

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # e.g. the reader of a pipe went away
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
