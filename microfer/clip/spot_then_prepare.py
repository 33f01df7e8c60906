"""One clip with whatever the caller did not give spotted: the policy that predict, serve
and live share.

Onset/apex/offset may be given (absolute frame numbers; for a video, 0-based frame
indices). What is not given is spotted: the given (or whole) range is aligned once on its
first frame, the motion curve relative to that frame is computed (`apex.motion_curve`),
and `apex.spot_interval` puts the apex at the motion peak, the onset at the last
low-motion frame before it and the offset at the first low-motion frame after it. Frames
the caller gave are used as given or refused, never replaced; spotted bounds stay inside
the run of frames with a face around the apex.

Two frames are an onset/apex pair (the form many ME sources circulate in): the first is
the onset, the second the apex and the offset; nothing is spotted. Given onset/apex must
be those two frames in that order.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional

from microfer.clip.apex import spot_interval
from microfer.clip.one_clip import PrepareSettings, clip_motion, prepare_clip
from microfer.clip.video import frame_ranges
from microfer.errors import ClipError
from microfer.records import PreparedClip

MIN_FRAMES = 4  # fewer frames cannot show an onset, a rise and an apex ...
PAIR_FRAMES = 2  # ... except an onset/apex pair, which shows them as given
MARKS = ("onset", "apex", "offset")


@dataclass
class PreparedInterval:
    """A prepared clip and how its onset/apex/offset came about."""

    clip: PreparedClip
    given: list[str]  # which of onset/apex/offset the caller gave
    spotted: list[str]  # which were spotted from motion
    notes: list[str] = field(default_factory=list)
    # motion vs the first frame of the scanned range, one value per frame of curve_frames
    # (what onset/apex/offset were spotted on; empty when all three were given)
    curve: list[float] = field(default_factory=list)
    curve_frames: list[int] = field(default_factory=list)


def check_marks(name: str, numbers: list[int], onset, apex, offset) -> None:
    """ClipError unless the given frames exist and are in order (onset < apex <= offset)."""
    if len(numbers) < MIN_FRAMES and len(numbers) != PAIR_FRAMES:
        raise ClipError(
            f"{name}: {len(numbers)} frame(s); a clip needs at least {MIN_FRAMES}, "
            f"or exactly {PAIR_FRAMES} (an onset/apex pair)"
        )
    for what, value in zip(MARKS, (onset, apex, offset)):
        if value is not None and value not in numbers:
            raise ClipError(
                f"{name}: {what} frame {value} is not in the clip "
                f"(frames {numbers[0]}..{numbers[-1]})"
            )
    if apex is not None and onset is not None and apex <= onset:
        raise ClipError(
            f"{name}: the given apex {apex} is not after the given onset {onset}; give an apex "
            "after the onset, or none to have it spotted"
        )
    if apex is not None and offset is not None and apex > offset:
        raise ClipError(
            f"{name}: the given apex {apex} is after the given offset {offset}; give an apex "
            "at or before the offset, or none to have it spotted"
        )
    if onset is not None and offset is not None and offset <= onset:
        raise ClipError(f"{name}: the given offset {offset} is not after the given onset {onset}")


def prepare_interval(
    source,
    name: str,
    onset: Optional[int] = None,
    apex: Optional[int] = None,
    offset: Optional[int] = None,
    settings: PrepareSettings = PrepareSettings(),
    timings: Optional[dict] = None,
) -> PreparedInterval:
    """Prepare the clip of `source` (a FrameSource), spotting what is not given."""
    numbers = list(source.numbers)
    check_marks(name, numbers, onset, apex, offset)
    given = [k for k, v in zip(MARKS, (onset, apex, offset)) if v is not None]
    user_apex = apex is not None
    pair = len(numbers) == PAIR_FRAMES
    if pair:
        onset, apex, offset = _pair_marks(name, numbers, onset, apex, offset)
    if onset is not None and offset is not None:
        clip = prepare_clip(
            source, onset, apex, offset, settings, timings=timings, strict_apex=user_apex
        )
        result = PreparedInterval(clip, given, [])
    else:
        result = _spot_then_prepare(source, name, numbers, onset, apex, offset, settings, timings)
        result.given = given
    result.notes = [n for n in result.clip.notes.split("; ") if n] + result.notes
    if pair:
        result.notes.append(f"two frames: onset/apex pair {numbers[0]} -> {numbers[1]}")
    if apex is None or result.clip.apex_source == "spotted":
        result.spotted = sorted(set(result.spotted) | {"apex"})
    result.spotted = [s for s in MARKS if s in result.spotted]
    return result


def _pair_marks(name, numbers, onset, apex, offset):
    """(onset, apex, offset) of a two-frame clip: first, second, second; given marks must agree."""
    first, second = numbers
    for what, value, expected in zip(MARKS, (onset, apex, offset), (first, second, second)):
        if value is not None and value != expected:
            raise ClipError(
                f"{name}: two frames ({first}, {second}) are an onset/apex pair: the {what} "
                f"must be frame {expected}, not {value} (or leave it out)"
            )
    return first, second, second


def _spot_then_prepare(source, name, numbers, onset, apex, offset, settings, timings):
    # spot over the given (or whole) range, aligned once on its first frame; the second
    # pass reuses the scan's decoded frames, its alignment when the onset stays, and its
    # face box when the onset moved but the face did not (one_clip's memo). The scan's
    # flow is computed only once it is known to be kept.
    first = onset if onset is not None else numbers[0]
    last = offset if offset is not None else numbers[-1]
    user_apex = apex is not None
    memo: dict = {}
    scan = prepare_clip(
        source, first, None, last, settings, timings=timings, memo=memo, motion=False
    )
    span = [n for n in numbers if first <= n <= last]
    spotted, notes = [], []
    onset, apex, offset = _spotted_marks(name, span, scan, onset, apex, offset, spotted, notes)
    if offset <= onset:  # no rise to speak of: fall back to the whole range
        onset, offset = first, last
    if not user_apex and (onset, apex) == (first, scan.apex):
        t = time.perf_counter()
        flow, strain = clip_motion(scan.onset_face, scan.apex_face, settings)
        if timings is not None:
            timings["flow"] = timings.get("flow", 0.0) + (time.perf_counter() - t) * 1000
        clip = dataclasses.replace(scan, offset=offset, flow=flow, strain=strain)
    else:
        clip = prepare_clip(
            source, onset, apex, offset, settings, timings=timings, strict_apex=user_apex, memo=memo
        )
        memo.clear()
        notes += [
            n for n in scan.notes.split("; ") if n.startswith("no face") and n not in clip.notes
        ]
    return PreparedInterval(clip, [], spotted, notes, list(scan.motion_curve), span)


def _spotted_marks(name, span, scan, onset, apex, offset, spotted, notes):
    """(onset, apex, offset) with the missing ones spotted on the scan's motion curve; a
    given apex is kept and the spotted bounds make room for it."""
    user_apex = apex is not None
    i_on, i_apex, i_off = spot_interval(scan.motion_curve)
    missing = set(scan.no_face_frames)
    if not user_apex and span[i_apex] in missing:  # the peak of a smoothed edge: take scan's
        i_apex = span.index(scan.apex)
    centre = apex if user_apex else span[i_apex]
    if centre in missing:
        raise ClipError(
            f"{name}: no face found in the given apex frame {apex} "
            f"(frames {frame_ranges(sorted(missing))} have none)"
        )
    lo = hi = span.index(centre)  # the run of frames with a face around the apex
    while lo > 0 and span[lo - 1] not in missing:
        lo -= 1
    while hi < len(span) - 1 and span[hi + 1] not in missing:
        hi += 1
    if onset is None:
        onset = max(span[i_on], span[lo])
        spotted.append("onset")
    if offset is None:
        offset = min(span[max(i_off, i_apex)], span[hi])
        spotted.append("offset")
    if user_apex:
        if onset >= apex:
            onset = span[lo]
            notes.append(f"spotted onset moved to {onset}, before the given apex {apex}")
        if offset < apex:
            offset = span[hi]
            notes.append(f"spotted offset moved to {offset}, after the given apex {apex}")
        if onset >= apex:
            raise ClipError(
                f"{name}: the given apex {apex} is the first frame "
                f"{'with a face ' if missing else ''}of the clip; there is no onset before it"
            )
    elif onset < span[i_apex] <= offset:
        apex = span[i_apex]
        spotted.append("apex")
    return onset, apex, offset
