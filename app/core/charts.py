"""Small bar charts and heatmaps drawn with Pillow into PNG files (no Qt, no plotting library)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BAR_COLOURS = ("#4c8bf5", "#f5a623")
TEXT_COLOUR = "#000000"
AXIS_COLOUR = "#000000"

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
Box = tuple[float, float, float, float]


def _font(size: int) -> Font:
    """Pillow's bundled font at ``size`` pixels (scalable with Pillow >= 10.1 and FreeType)."""
    return ImageFont.load_default(size=size)


def _text(draw: ImageDraw.ImageDraw, box: Box, text: str, font: Font, align: str = "center") -> None:
    """Draw ``text`` inside ``box`` (left, top, right, bottom): vertically centred, aligned "left" or "center"."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    x = box[0] if align == "left" else box[0] + (box[2] - box[0] - width) / 2
    y = box[1] + (box[3] - box[1] - height) / 2
    draw.text((x - left, y - top), text, fill=TEXT_COLOUR, font=font)


def bar_chart_png(
    path: Path, title: str, labels: Sequence[str], series: dict[str, Sequence[float]], unit: str = "tokens/s"
) -> Path:
    """Grouped bars: one group per label, one bar per series; values printed above the bars."""
    width, height, margin = 220 + 140 * max(1, len(labels)), 460, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title_font, font = _font(16), _font(13)
    _text(draw, (0, 8, width, 32), title, title_font)
    top = max((v for values in series.values() for v in values), default=1.0) or 1.0
    plot_height = height - 2 * margin - 20
    group_width = (width - 2 * margin) / max(1, len(labels))
    bar_width = group_width * 0.7 / max(1, len(series))
    baseline = height - margin
    for i, label in enumerate(labels):
        x0 = margin + i * group_width + group_width * 0.15
        for j, values in enumerate(series.values()):
            value = values[i]
            bar_height = max(0.0, plot_height * value / top)
            left, right = x0 + j * bar_width, x0 + (j + 1) * bar_width - 4
            if bar_height > 0:
                draw.rectangle(
                    (left, baseline - bar_height, right, baseline - 1), fill=BAR_COLOURS[j % len(BAR_COLOURS)]
                )
            _text(
                draw,
                (left - 10, baseline - bar_height - 18, right + 10, baseline - bar_height - 2),
                f"{value:.1f}",
                font,
            )
        _text(draw, (x0 - 10, baseline + 4, x0 + group_width * 0.7 + 10, baseline + 24), label, font)
    draw.line((margin - 10, baseline, width - margin + 10, baseline), fill=AXIS_COLOUR, width=1)
    for j, name in enumerate(series):
        x = margin + j * 200
        draw.rectangle((x, 38, x + 13, 51), fill=BAR_COLOURS[j % len(BAR_COLOURS)])
        _text(draw, (x + 20, 35, x + 200, 54), f"{name} ({unit})", font, align="left")
    image.save(path, format="PNG")
    return path


def heatmap_png(
    path: Path, title: str, rows: Sequence[Sequence[float]], row_label: str = "layer", column_label: str = "expert"
) -> Path:
    """A rows x columns grid shaded by value (0 = white, max = dark orange), values printed in the cells."""
    heatmap_image(title, rows, row_label, column_label).save(path, format="PNG")
    return path


def heatmap_image(
    title: str, rows: Sequence[Sequence[float]], row_label: str = "layer", column_label: str = "expert"
) -> Image.Image:
    """The heatmap of :func:`heatmap_png` as an RGB Pillow image, e.g. for a window to show."""
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    cell, left, top = 44, 70, 56
    width = max(left + n_cols * cell + 20, 200)
    image = Image.new("RGB", (width, top + n_rows * cell + 30), "white")
    draw = ImageDraw.Draw(image)
    title_font, font = _font(13), _font(12)
    _text(draw, (0, 6, width, 26), title, title_font)
    peak = max((v for r in rows for v in r), default=1.0) or 1.0
    for c in range(n_cols):
        x = left + c * cell
        _text(draw, (x, top - 22, x + cell - 2, top - 4), f"{column_label[:1].upper()}{c}", font)
    for r, values in enumerate(rows):
        y = top + r * cell
        _text(draw, (4, y, left - 8, y + cell - 2), f"{row_label} {r}", font, align="left")
        for c, value in enumerate(values):
            strength = min(1.0, max(0.0, value / peak))
            colour = (255, round(255 - 143 * strength), round(255 - 255 * strength))
            x = left + c * cell
            draw.rectangle((x, y, x + cell - 3, y + cell - 3), fill=colour)
            _text(draw, (x, y, x + cell - 2, y + cell - 2), f"{value:.2f}", font)
    return image
