"""Memory a call will need, checked before anything large is allocated (docs/design.md §6):
a call that cannot fit raises a MemoryError saying how much, for what, and what to do,
instead of the allocator's error (or std::bad_alloc) naming nothing."""
from __future__ import annotations

import os

import torch


def available_bytes(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory, or on the CPU the
    smaller of the system's MemAvailable and what the cgroup limit leaves; None when the
    platform does not say (then nothing is checked)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                lim = f.read().strip()
            with open(usage) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if lim.isdigit() and int(lim) < 2 ** 60:
            found.append(max(0, int(lim) - used))
        break
    return min(found) if found else None


def check(need: int, device: torch.device, what: str, advice: str) -> None:
    """Raise MemoryError when ``need`` bytes exceed what ``device`` has available.
    FLASHCKA_SKIP_MEMORY_CHECK=1 turns the check off (the allocator then decides)."""
    if os.environ.get("FLASHCKA_SKIP_MEMORY_CHECK") == "1":
        return
    have = available_bytes(device)
    if have is not None and need > have:
        raise MemoryError(f"{what} needs about {_gib(need)} of {device.type} memory, but "
                          f"{_gib(have)} is available. {advice}")


def _gib(b: int) -> str:
    return f"{b / 2 ** 30:.2f} GiB"
