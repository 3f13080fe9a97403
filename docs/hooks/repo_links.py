"""MkDocs hook: links from a page to a repository file outside ``docs/``.

A page may link to any file of the repository by its relative path, e.g.
``[`studies/quickstart.toml`](../studies/quickstart.toml)``: the link works where the Markdown is
read in the repository. The site has no such file, so on the site the link points into the
repository when ``mkdocs.yml`` sets ``repo_url``, and is its text alone otherwise. A link to a file
that does not exist fails the build, as ``--strict`` does for links between pages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config.docs_dir).resolve()
    root = Path(config.config_file_path).resolve().parent
    here = (docs / page.file.src_uri).parent

    def rewrite(m: re.Match[str]) -> str:
        text, target, anchor = m.group(1), m.group(2), m.group(3) or ""
        if ":" in target or target.startswith("/"):  # a URL, mailto:, or a site-absolute path
            return m.group(0)
        path = (here / target).resolve()
        if path.is_relative_to(docs):  # a page or asset of the site: mkdocs checks it
            return m.group(0)
        if not path.is_relative_to(root) or not path.exists():
            raise PluginError(f"{page.file.src_uri}: link to {target!r}: no such file in the repository")
        if config.repo_url:
            rel = path.relative_to(root).as_posix()
            return f"[{text}]({config.repo_url.rstrip('/')}/blob/HEAD/{rel}{anchor})"
        return text

    return LINK.sub(rewrite, markdown)
