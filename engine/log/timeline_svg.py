"""Draw a `Timeline` as SVG (or an HTML page holding it), written by hand: plain XML.

Layout: time runs left to right; the top row holds the room's messages, and each member
has a lane below it. A lane's solid bar is a stretch in the room, its dashed bar a stretch
away with the session kept (until a recovery); ticks are the messages it was sent, hollow
circles those it missed while away (replayed at its recovery), crosses those it was
excluded from; a red triangle is a disconnect, with its reason, a green circle a recovery.
Epochs are background bands; crashes, starts, stops, new epochs and damaged records are
vertical lines; a time the server was down is a hatched band of fixed width, labelled with
its duration, so that a long outage does not squeeze the rest.

Every element carries a ``class`` (and ``data-*`` attributes: ``data-sid``,
``data-offset``, ``data-reason``, ...) so that tools and tests can read the picture back,
and a ``<title>`` that a browser shows on hover.
"""

from __future__ import annotations

import datetime
import html
import xml.etree.ElementTree as ET
from typing import Final

from roomcast.engine.log.timeline import (
    BoundaryKind,
    Gap,
    MarkKind,
    SpanKind,
    Timeline,
)

__all__ = ["render_html", "render_svg"]

SVG_NS: Final = "http://www.w3.org/2000/svg"
WIDTH: Final = 1200
LEFT: Final = 190  # lane labels
RIGHT: Final = 24
TOP: Final = 78  # title, axis and boundary labels
ROW: Final = 30
GAP_WIDTH: Final = 48
"""Pixels of a server-down band, whatever its duration."""
EPOCH_FILLS: Final = ("#f4f6fa", "#fbf6ee")
COLOURS: Final = {
    "member": "#2f6db5",
    "away": "#e08a1e",
    "delivered": "#1b2a3a",
    "missed": "#e08a1e",
    "excluded": "#9a9a9a",
    "disconnect": "#c62828",
    "recovered": "#2e8b3a",
    "start": "#2e8b3a",
    "stop": "#555555",
    "crash": "#c62828",
    "epoch": "#7b3fb3",
    "damage": "#b8860b",
}


def _clock(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _Scale:
    """Time to x: linear, except that each server-down gap takes `GAP_WIDTH` pixels."""

    def __init__(self, timeline: Timeline) -> None:
        self.start, self.end = timeline.start, timeline.end
        self.gaps = sorted((g for g in timeline.gaps if g.end > g.start), key=lambda g: g.start)
        plot = WIDTH - LEFT - RIGHT - GAP_WIDTH * len(self.gaps)
        active = (self.end - self.start) - sum(g.end - g.start for g in self.gaps)
        self.per_second = plot / active if active > 0 else 0.0
        # Everything at one instant (between the gaps): draw it in the middle.
        self.lead = plot / 2 if active <= 0 else 0.0

    def x(self, time: float) -> float:
        x = LEFT + self.lead
        cursor = self.start
        for gap in self.gaps:
            if time <= gap.start:
                break
            x += (gap.start - cursor) * self.per_second
            if time < gap.end:
                return x + GAP_WIDTH * (time - gap.start) / (gap.end - gap.start)
            x += GAP_WIDTH
            cursor = gap.end
        return round(x + (max(time, cursor) - cursor) * self.per_second, 2)


def _el(parent: ET.Element, tag: str, title: str | None = None, /, **attrs: object) -> ET.Element:
    element = ET.SubElement(
        parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()}
    )
    if title is not None:
        ET.SubElement(element, "title").text = title
    return element


def _text(parent: ET.Element, x: float, y: float, text: str, **attrs: object) -> ET.Element:
    element = _el(parent, "text", x=round(x, 2), y=round(y, 2), **attrs)
    element.text = text
    return element


def _gap_title(gap: Gap) -> str:
    return f"{gap.label}: {_duration(gap.end - gap.start)}, {_iso(gap.start)} to {_iso(gap.end)}"


def render_svg(timeline: Timeline) -> str:
    """The timeline as an SVG document (UTF-8 text, no XML declaration)."""
    scale = _Scale(timeline)
    rows = 1 + len(timeline.lanes)
    legend_y = TOP + rows * ROW + 36  # below the gaps' durations
    notes = _notes(timeline)
    height = legend_y + 28 + 16 * len(notes)
    svg = ET.Element(
        "svg",
        {
            "xmlns": SVG_NS,
            "width": str(WIDTH),
            "height": str(height),
            "viewBox": f"0 0 {WIDTH} {height}",
            "font-family": "sans-serif",
            "font-size": "11",
            "class": "roomcast-timeline",
            "data-namespace": timeline.namespace,
            "data-room": timeline.room,
        },
    )
    defs = _el(svg, "defs")
    pattern = _el(
        defs,
        "pattern",
        id="down",
        width=6,
        height=6,
        patternUnits="userSpaceOnUse",
        patternTransform="rotate(45)",
    )
    _el(pattern, "rect", width=6, height=6, fill="#eeeeee")
    _el(pattern, "line", x1=0, y1=0, x2=0, y2=6, stroke="#bbbbbb", stroke_width=3)
    _el(svg, "rect", width=WIDTH, height=height, fill="white")
    _text(
        svg,
        12,
        18,
        f"room {timeline.room!r} in namespace {timeline.namespace!r}:"
        f" {_iso(timeline.start)} to {_iso(timeline.end)} (UTC)",
        font_size=13,
        font_weight="bold",
        class_="heading",
    )
    bottom = TOP + rows * ROW
    _epochs(svg, timeline, scale, bottom)
    _axis(svg, timeline, scale, bottom)
    for gap in timeline.gaps:
        x0, x1 = scale.x(gap.start), scale.x(gap.end)
        group = _el(svg, "g", _gap_title(gap), class_="gap", data_crashed=str(gap.crashed).lower())
        _el(
            group,
            "rect",
            x=x0,
            y=TOP - 8,
            width=max(x1 - x0, 2),
            height=bottom - TOP + 8,
            fill="url(#down)",
        )
        _text(
            group,
            (x0 + x1) / 2,
            bottom + 12,
            _duration(gap.end - gap.start),
            text_anchor="middle",
            fill="#666666",
            font_size=10,
        )
    for index, boundary in enumerate(timeline.boundaries):
        x = scale.x(boundary.time)
        colour = COLOURS[boundary.kind.value]
        group = _el(
            svg,
            "g",
            f"{_iso(boundary.time)} {boundary.label}",
            class_=f"boundary {boundary.kind.value}",
        )
        dash = "none" if boundary.kind in (BoundaryKind.CRASH, BoundaryKind.EPOCH) else "4 3"
        _el(
            group,
            "line",
            x1=x,
            y1=TOP - 12,
            x2=x,
            y2=bottom,
            stroke=colour,
            stroke_width=2 if boundary.kind is BoundaryKind.CRASH else 1,
            stroke_dasharray=dash,
        )
        _text(
            group,
            x + 2,
            TOP - 14 - 10 * (index % 2),
            boundary.kind.value,
            fill=colour,
            font_size=10,
        )
    _messages_row(svg, timeline, scale)
    for row, lane in enumerate(timeline.lanes, start=1):
        y = TOP + row * ROW + ROW / 2
        group = _el(svg, "g", class_="lane", data_sid=lane.sid)
        _text(
            group,
            LEFT - 8,
            y + 4,
            lane.sid,
            text_anchor="end",
            class_="lane-label",
            font_family="monospace",
        )
        _el(group, "line", x1=LEFT, y1=y, x2=WIDTH - RIGHT, y2=y, stroke="#e3e3e3")
        for span in lane.spans:
            x0, x1 = scale.x(span.start), scale.x(span.end)
            title = (
                f"{span.kind.value}: {_iso(span.start)} ({span.started_by}) to"
                f" {_iso(span.end)} ({span.ended_by})"
            )
            common = {
                "x": x0,
                "width": max(x1 - x0, 1.5),
                "class_": f"span {span.kind.value}",
                "data_started_by": span.started_by,
                "data_ended_by": span.ended_by,
            }
            if span.kind is SpanKind.MEMBER:
                _el(group, "rect", title, y=y - 4, height=8, fill=COLOURS["member"], **common)
            else:
                _el(
                    group,
                    "rect",
                    title,
                    y=y - 4,
                    height=8,
                    fill="none",
                    stroke=COLOURS["away"],
                    stroke_dasharray="4 2",
                    **common,
                )
        for mark in lane.marks:
            _mark(group, scale.x(mark.time), y, mark.kind, mark.label, mark.time, mark.offset)
    _legend(svg, legend_y)
    for index, note in enumerate(notes):
        _text(svg, 12, legend_y + 30 + 16 * index, note, class_="note", fill="#a33")
    return ET.tostring(svg, encoding="unicode")


def _notes(timeline: Timeline) -> list[str]:
    notes = []
    if timeline.messages_not_drawn:
        notes.append(
            f"{timeline.messages_not_drawn} later message(s) not drawn (at most"
            f" {len(timeline.messages)}): narrow the window with --since/--until"
        )
    if timeline.lanes_not_drawn:
        notes.append(f"{timeline.lanes_not_drawn} more member(s) not drawn")
    if not timeline.lanes:
        notes.append("no member joined this room in this window")
    return notes


def _epochs(svg: ET.Element, timeline: Timeline, scale: _Scale, bottom: float) -> None:
    for index, epoch in enumerate(timeline.epochs):
        x0, x1 = scale.x(epoch.start), scale.x(epoch.end)
        group = _el(
            svg,
            "g",
            f"epoch {epoch.epoch}: {_iso(epoch.start)} to {_iso(epoch.end)}",
            class_="epoch",
            data_epoch=epoch.epoch,
        )
        _el(
            group,
            "rect",
            x=x0,
            y=TOP - 8,
            width=max(x1 - x0, 1),
            height=bottom - TOP + 8,
            fill=EPOCH_FILLS[index % 2],
        )
        _text(
            group,
            x0 + 3,
            bottom - 3,
            f"epoch {epoch.epoch[:8] or '-'}",
            fill="#8a8a8a",
            font_size=9,
        )


def _axis(svg: ET.Element, timeline: Timeline, scale: _Scale, bottom: float) -> None:
    group = _el(svg, "g", class_="axis")
    _el(group, "line", x1=LEFT, y1=TOP - 8, x2=WIDTH - RIGHT, y2=TOP - 8, stroke="#999999")
    # Ticks at both ends and at the edges of each gap: the times a reader looks for.
    times = {timeline.start, timeline.end}
    for gap in timeline.gaps:
        times.update((gap.start, gap.end))
    last_x = -1e9
    for time in sorted(times):
        x = scale.x(time)
        if x - last_x < 70:
            continue
        last_x = x
        _el(group, "line", x1=x, y1=TOP - 11, x2=x, y2=TOP - 5, stroke="#999999")
        anchor = "end" if x > WIDTH - RIGHT - 40 else "start" if x < LEFT + 40 else "middle"
        _text(group, x, TOP - 40, _clock(time), text_anchor=anchor, fill="#555555", font_size=10)


def _messages_row(svg: ET.Element, timeline: Timeline, scale: _Scale) -> None:
    y = TOP + ROW / 2
    group = _el(svg, "g", class_="messages")
    _text(
        group,
        LEFT - 8,
        y + 4,
        f"messages ({len(timeline.messages)})",
        text_anchor="end",
        font_weight="bold",
    )
    for message in timeline.messages:
        x = scale.x(message.time)
        where = "the whole namespace" if message.whole_namespace else "the room"
        sender = f" from {message.sender}" if message.sender else ""
        title = (
            f"#{message.offset} {message.event}{sender} to {where}, {_iso(message.time)},"
            f" {message.members} member(s)"
        )
        _el(
            group,
            "line",
            title,
            x1=x,
            y1=y - 7,
            x2=x,
            y2=y + 7,
            stroke=COLOURS["delivered"],
            class_="message",
            data_offset=message.offset,
            data_event=message.event,
            data_whole_namespace=str(message.whole_namespace).lower(),
        )


def _mark(
    group: ET.Element, x: float, y: float, kind: MarkKind, label: str, time: float, offset: int
) -> None:
    colour = COLOURS[kind.value]
    title = f"#{offset} {kind.value}: {label}, {_iso(time)}"
    attrs: dict[str, object] = {"class_": f"mark {kind.value}", "data_offset": offset}
    if kind is MarkKind.DELIVERED:
        _el(group, "line", title, x1=x, y1=y - 6, x2=x, y2=y + 6, stroke=colour, **attrs)
    elif kind is MarkKind.EXCLUDED:
        path = f"M{x - 3},{y - 3}L{x + 3},{y + 3}M{x - 3},{y + 3}L{x + 3},{y - 3}"
        _el(group, "path", title, d=path, stroke=colour, stroke_width=1.5, **attrs)
    elif kind is MarkKind.MISSED:
        _el(group, "circle", title, cx=x, cy=y, r=3.5, fill="white", stroke=colour, **attrs)
    elif kind is MarkKind.RECOVERED:
        mark = _el(group, "g", title, **attrs)
        _el(mark, "circle", cx=x, cy=y, r=5, fill=colour)
        # Below the bar, where a disconnect's label (above it) cannot be.
        _label(mark, x, y + 15, "recovered", colour)
    else:
        mark = _el(group, "g", title, data_reason=label, **attrs)
        points = f"{x},{y - 6} {x + 6},{y + 5} {x - 6},{y + 5}"
        _el(mark, "polygon", points=points, fill=colour)
        _label(mark, x, y - 7, label, colour)


def _label(parent: ET.Element, x: float, y: float, text: str, colour: str) -> None:
    # To the right of the mark, or to its left near the right edge (not cut off).
    if x + 8 + 5.5 * len(text) > WIDTH - 4:
        _text(parent, x - 7, y, text, fill=colour, font_size=10, text_anchor="end")
    else:
        _text(parent, x + 7, y, text, fill=colour, font_size=10)


def _legend(svg: ET.Element, y: float) -> None:
    group = _el(svg, "g", class_="legend")
    x = 12.0
    items = (
        ("member", "in the room"),
        ("away", "away, session kept (until recovered)"),
        ("delivered", "message sent to it"),
        ("missed", "message while away (replayed at recovery)"),
        ("excluded", "message it was excluded from"),
        ("disconnect", "disconnect (reason)"),
        ("recovered", "recovered"),
    )
    for key, text in items:
        dash = "3 2" if key == "away" else "none"
        _el(
            group,
            "rect",
            x=x,
            y=y - 8,
            width=14,
            height=8,
            stroke=COLOURS[key],
            fill="none" if key in ("away", "missed") else COLOURS[key],
            stroke_dasharray=dash,
        )
        _text(group, x + 18, y, text, fill="#333333", font_size=10)
        x += 24 + 5.6 * len(text)


def render_html(timeline: Timeline) -> str:
    """An HTML page holding `render_svg`'s picture (hover an element for its details)."""
    title = html.escape(f"roomcast: room {timeline.room} ({timeline.namespace}) over time")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f'<body style="margin:16px;font-family:sans-serif">\n<h1 style="font-size:16px">'
        f"{title}</h1>\n{render_svg(timeline)}\n</body></html>\n"
    )
