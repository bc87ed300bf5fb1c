"""The explorer: a local web app that shows a network's linear map live (``linearlens serve``).

:class:`Explorer` holds a network and images and answers the page's questions with the library
(explanations, rows and columns of the linear interpreter, residual decomposition, SVD);
:mod:`.api` maps HTTP requests to it, :mod:`.server` serves them with the standard library,
:mod:`.atlas` computes neuron atlases (Figs. 8, 10, B4 of the B-cos paper) and :mod:`.report`
writes the same content as one self-contained HTML file.
"""

from .api import handle
from .server import make_server, start_background
from .session import Explorer

__all__ = ["Explorer", "handle", "make_server", "start_background"]
