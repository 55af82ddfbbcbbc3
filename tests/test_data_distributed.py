"""The input pipeline under a real 2-process gloo group: each (rank, worker) reads its own shards."""

import json
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from gloo import tcp_init_method

from test_data_pipeline import TINY, _write_shards
from tips.data import DataConfig, build_train_loader


def _read_one_epoch(rank: int, world_size: int, init_method: str, pattern: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        cfg = DataConfig(sources=[pattern], resampled=False, batch_size=4, num_workers=2, epoch_size=40,
                         shuffle_buffer=0, views=TINY, patch_size=8)
        loader = build_train_loader(cfg, None, rank=dist.get_rank(), world_size=dist.get_world_size())
        seen = [{"worker": b.worker, "keys": b.keys} for b in loader]
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            Path(out_dir, "seen.json").write_text(json.dumps(gathered))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_with_two_workers_each_read_disjoint_shards(tmp_path):
    keys = _write_shards(tmp_path, "s", 4, 20, seed=3)
    pattern = str(tmp_path / "s-{000000..000003}.tar")
    mp.spawn(_read_one_epoch, args=(2, tcp_init_method(), pattern, str(tmp_path)), nprocs=2, join=True)
    per_rank = json.loads((tmp_path / "seen.json").read_text())
    shards_of: dict[tuple[int, int], set[str]] = {}
    all_keys = []
    for rank, batches in enumerate(per_rank):
        assert len(batches) == 10  # equal batch counts on both ranks
        for b in batches:
            all_keys += b["keys"]
            shards_of.setdefault((rank, b["worker"]), set()).update(k.split("_")[0] for k in b["keys"])
    assert len(shards_of) == 4 and all(len(s) == 1 for s in shards_of.values())
    assert len(set.union(*shards_of.values())) == 4  # no shard read by two (rank, worker) pairs
    assert sorted(all_keys) == sorted(keys)
