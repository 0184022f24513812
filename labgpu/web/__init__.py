"""The hub's web pages: a JupyterHub managed service (``labgpu web``, at /services/labgpu/) that
logs users in through the hub (Hub OAuth) and shows what LabGPU Hub knows: the GPU board, my
usage, lab usage, and a JSON API behind each page.

:mod:`~labgpu.web.app` builds the tornado application from the route lists of
``ROUTE_MODULES``; :mod:`~labgpu.web.base` holds the handler every page derives from (the hub
user, admin and group-manager checks, hub-styled HTML, JSON, 403); :mod:`~labgpu.web.svg` draws
the charts (server-side SVG, no CDN); the pages' figures come from :mod:`labgpu.db.usage`, the
same code as ``labgpu usage``. ``hub_templates/`` extends JupyterHub's own templates (nav bar
links, the home page's GPU column) through ``c.JupyterHub.template_paths``.
"""
