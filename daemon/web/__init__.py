"""The page for the people at the folder and its JSON API (operations.md, "The page"): what
the daemon serves besides /healthz and /metrics, one module per job.

- ``paths``: turning a URL's path into a file inside one allowed folder, never outside;
- ``index``: the outbox and quarantine listings, cached and bounded;
- ``meta``: what an output says about itself (model, settings), read cheaply;
- ``thumbs``: thumbnails made by the safe decoder in a decoder process, cached on disk;
- ``requeue``: moving a quarantined file back to the inbox (the page's "Retry");
- ``exchange``: the types the server and the page's handlers share (a route, a request);
- ``routes``: the page's handlers and their route table, served by daemon.http;
- ``guard``: the checks every POST passes (token, Origin, Sec-Fetch-Site, Host);
- ``api``: the JSON documents; ``static/``: the page itself.
"""
