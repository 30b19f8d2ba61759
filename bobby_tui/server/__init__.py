"""`bobby-tui serve`: an OpenAI-compatible HTTP API over one engine thread that batches every client's rows.

``protocol`` checks requests and builds responses (no MLX), ``worker`` is the engine thread, ``app`` the aiohttp
side. Only the engine thread imports MLX.
"""

from .app import ServeError, ServeOptions, bind_problem, serve
from .protocol import ServerLimits

__all__ = ["ServeError", "ServeOptions", "ServerLimits", "bind_problem", "serve"]
