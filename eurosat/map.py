"""The granule command: a whole raster (a Sentinel-2 granule) mapped window by window into a Cloud-Optimized GeoTIFF.

    python -m eurosat.map T32UMU_20240612_TCI.tif landcover.tif --csv cells.csv
    python -m eurosat.map granule_B04B03B02.tif landcover.tif --radiometry baseline-04 --model owner/name

The raster is read in strips of cells, never whole, and its cells go through the app's Predictor with the
same preprocessing, temperature and TTA setting as the app, so a cell gets the label the Scene tab gives it.
It writes the class map (a Cloud-Optimized GeoTIFF: class indices, 255 where nothing was classified, the
raster's CRS, the class colours), the per-class area table and, with --csv, one row per cell.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import BUNDLED_MODEL, ENV_MODEL, MapConfig, add_flags, from_flags
from .errors import SettingError, UserError

ROOT = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eurosat.map", description=__doc__.splitlines()[0],
                                epilog=f"environment:\n  {ENV_MODEL}  the model when --model is not given",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, MapConfig)
    return p


def run(config: MapConfig) -> dict[str, Path]:
    """Map config.input into config.output (and the area table, and the cells' CSV); the paths written, by kind."""
    import torch
    from tqdm import tqdm

    from . import scene as scenes
    from .engine import resolve_device
    from .fileio import write_text
    from .hub import load
    from .inference import Predictor, cpu_threads
    from .mapping import map_raster
    from .raster import open_raster

    if config.batch_size < 1 or config.window_rows < 1:
        raise SettingError(f"--batch-size and --window-rows must be at least 1; got {config.batch_size} and "
                           f"{config.window_rows}.")
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads or cpu_threads())
    checkpoint = load(config.model, device=device)
    predictor = Predictor(checkpoint, device=device, tta=checkpoint.tta if config.tta is None else config.tta)
    if config.backend == "onnxruntime":
        predictor.use_onnxruntime(config.graph_cache, threads=torch.get_num_threads())
    with open_raster(config.input, config.radiometry) as raster, \
            tqdm(unit="cells", disable=not config.progress, dynamic_ncols=True) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        scene = map_raster(raster, predictor, uncertain_below=checkpoint.notice_threshold,
                           batch_size=config.batch_size, window_rows=config.window_rows, max_cells=None,
                           keep_image=False, progress=progress)
    output = Path(config.output)
    written = {"classes": scenes.write_classes(scene, output),
               "areas": write_text(config.areas or output.with_name(f"{output.stem}_areas.csv"),
                                   scenes.areas_csv(scene))}
    if config.csv:
        written["cells"] = write_text(config.csv, scenes.cells_csv(scene))
    print(f"{len(scene.cells):,} cells classified by {Path(str(config.model)).name} (TTA "
          f"{'on' if predictor.tta else 'off'}; forward passes: {predictor.backend_note}). {scenes.describe(scene)}")
    for row in scenes.summary(scene):
        print(f"  {row['class']:<22} {row['cells']:>7,} cells {row['area_km2']:>12,.3f} km² "
              f"{row['share_percent']:6.1f}%")
    return written


def main(argv: list[str] | None = None) -> int:
    """Map the raster the arguments name; print how it was read, the area per class and the files written."""
    config = from_flags(MapConfig, parser().parse_args(argv),
                        model=os.environ.get(ENV_MODEL, "").strip() or str(ROOT / BUNDLED_MODEL))
    try:
        written = run(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for kind, path in written.items():
        print(f"wrote {path} ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
