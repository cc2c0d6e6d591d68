"""Reload when a file the config is built from changes on disk."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles


async def watch(
    files: Callable[[], list[Path]],
    reload: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
) -> None:
    """Call `reload` whenever one of `files()` is written, renamed or removed.

    Watches the folders, not the files: an editor's atomic save (write a temp
    file, rename it over) replaces the inode, after which a watch on the file
    itself goes silent (inotify follows the inode). An event that names a watched file in a
    watched folder triggers a re-read; the reload skips an unchanged digest.
    The set is asked for again after each reload, so a config that names
    another jwks_file is watched there from then on.
    """
    while not stop.is_set():
        wanted = {_key(p) for p in files()}
        folders = sorted({p.parent for p in wanted if p.parent.is_dir()})
        if not folders:
            return

        def relevant(change: watchfiles.Change, changed: str, wanted: set[Path] = wanted) -> bool:
            return _key(Path(changed)) in wanted

        async for _ in watchfiles.awatch(
            *folders,
            watch_filter=relevant,
            stop_event=stop,
            debounce=400,
            step=50,
            recursive=False,
        ):
            await reload()
            if {_key(p) for p in files()} != wanted:
                break  # watch the new set
        else:
            return  # stopped


def _key(path: Path) -> Path:
    """A file by its folder's real path and its own name, as events name it.

    The file itself is not resolved: replacing a symlink (certbot's live/
    folder) changes where it points, not the name an event carries.
    """
    return path.parent.resolve() / path.name
