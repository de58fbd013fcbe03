"""The measured colours of marker-pen ink, shared by the ink corruption (`markup`) and tissue detection (`tissue`).

Kept apart from `markup` so that detecting ink on a slide does not import torch.
"""

from __future__ import annotations

# Ink colour as an optical-density direction (absorbance per RGB channel, strongest = 1).
# green: measured on the CMU-1 SVS (green margin ink at the tissue edge): -log(pixel / glass)
#        over the inked pixels has the ratio R:G:B = 1 : 0.52 : 0.41 at both median and darkest ink.
# blue / black: typical blue and black marker ink on glass, about (70, 100, 180) and (45, 45, 55)
#        in 8-bit RGB at full density; no sample of these is shipped, so they are estimates.
INK_COLOURS: dict[str, tuple[float, float, float]] = {
    "green": (1.00, 0.52, 0.41),
    "blue": (1.00, 0.71, 0.25),
    "black": (1.00, 1.00, 0.88),
}
