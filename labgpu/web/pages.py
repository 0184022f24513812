"""The pages and their JSON API: GPU board, my usage, lab usage (skeleton; filled in by issue 14)."""

from __future__ import annotations

from tornado import web

from labgpu.web.base import BaseHandler


class BoardPage(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        self.render_page("board.html", title="GPUs")


class BoardApi(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        self.write_json({"user": self.viewer.name, "admin": self.viewer.admin})


def routes() -> list[tuple[str, type[web.RequestHandler]]]:
    return [(r"gpus", BoardPage), (r"api/gpus", BoardApi)]
