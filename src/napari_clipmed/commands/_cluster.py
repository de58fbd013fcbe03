"""The `--cluster` options every distributed command shares, and a tqdm bar that counts items."""

from __future__ import annotations

import argparse
import sys

from napari_clipmed.progress import Progress


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (Dask; needs the [cluster] extra)")
    g.add_argument("--cluster", default=None, metavar="SPEC",
                   help="local:N (N worker processes here) or tcp://HOST:PORT (a running scheduler); default: in-process. "
                        "Each item's outputs are written as it finishes; rerunning with the same --out resumes")
    g.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads per worker (default: cores // workers on that machine)")


def check_cluster(args: argparse.Namespace) -> None:
    """With --cluster: a bad spec or a missing Dask fails here, before anything is read, loaded or written."""
    if args.cluster:
        from napari_clipmed.distributed import ClusterSpec, require_distributed

        ClusterSpec.parse(args.cluster)
        require_distributed()


def print_failures(run) -> None:  # run: distributed.RunItemsResult
    """One line per failed item: its key and error."""
    for failure in run.failed:
        print(f"  failed {failure.key}: {failure.error}")


def model_ref_from_args(args: argparse.Namespace, name: str | None = None):  # -> ModelRef
    """What each worker loads; the checkpoint is resolved (and downloaded, when allowed) here, once."""
    from napari_clipmed.distributed import ModelRef
    from napari_clipmed.models.registry import get_spec
    from napari_clipmed.models.weights import resolve_weights

    name = name or args.model
    path = resolve_weights(get_spec(name), args.weights, weights_dir=args.weights_dir)
    return ModelRef(name, str(path) if path else None, args.weights_dir, args.device, getattr(args, "precision", "auto"))


class ItemBar:
    """A tqdm bar over items (cases, chunks, slides) across the cluster; silent with `quiet`."""

    def __init__(self, quiet: bool = False, unit: str = "item") -> None:
        from tqdm import tqdm

        self.bar = None if quiet else tqdm(total=0, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, step: Progress) -> None:
        if self.bar is None:
            return
        if self.bar.total != step.total:
            self.bar.reset(total=step.total)
        self.bar.n = step.done
        self.bar.set_description(step.message.split(":")[0], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
