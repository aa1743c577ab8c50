"""torch-cka 0.21's ``torch_cka.utils``: ``add_colorbar``."""
from __future__ import annotations

__all__ = ["add_colorbar"]


def add_colorbar(im, aspect=10, pad_fraction=0.5, **kwargs):
    """A vertical colorbar right of ``im``'s axes, as tall as the axes and
    ``1/aspect`` of their height wide, ``pad_fraction`` of that width away; the current
    axes stay current. Returns the ``Colorbar``; ``kwargs`` go to ``figure.colorbar``."""
    import matplotlib.pyplot as plt
    from mpl_toolkits import axes_grid1
    divider = axes_grid1.make_axes_locatable(im.axes)
    width = axes_grid1.axes_size.AxesY(im.axes, aspect=1.0 / aspect)
    pad = axes_grid1.axes_size.Fraction(pad_fraction, width)
    current = plt.gca()
    cax = divider.append_axes("right", size=width, pad=pad)
    plt.sca(current)
    return im.axes.figure.colorbar(im, cax=cax, **kwargs)
