"""Frame numbers: checking that a source has the frames asked for, and writing many numbers
as short ranges in messages."""

from __future__ import annotations

from typing import Sequence

from microfer.errors import ClipError


def check_numbers(source, numbers: Sequence[int]) -> None:
    available = set(source.numbers)
    missing = [n for n in numbers if n not in available]
    if missing:
        lo, hi = (source.numbers[0], source.numbers[-1]) if source.numbers else (None, None)
        raise ClipError(
            f"{source.path}: frame(s) {frame_ranges(missing)} not found "
            f"(available: {len(available)} frames, {lo}..{hi})"
        )


def frame_ranges(numbers: Sequence[int], limit: int = 6) -> str:
    """Compact '3-7, 9, 12-15' listing of frame numbers, for messages."""
    nums = sorted(set(int(n) for n in numbers))
    parts, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    more = f" (+{len(parts) - limit} more runs)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more
