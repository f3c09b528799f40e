"""What GitLab has let callers read: file bindings per owner, accepted credentials, refusals."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from proxy.models import project_of, valid_sha256
from proxy.records import Records

# Record keys: "bound|<owner>|<project>" -> frozenset of "<sha256>/<filename>";
# "accepted|<credential hash>" -> when; "refused|<owner>|<sha256>/<filename>" -> True;
# "source|<sha256>/<filename>" -> where a followed public page said the file is (not secret);
# "public|<sha256>" -> True once those bytes were fetched from a public URL and verified;
# "meta|<wheel sha256>" -> the sha256 of its core metadata, "" when it has none.


class Grants:
    """Kept across restarts and shared by workers; holds no credential, only salted hashes.

    A file is bound to an owner under the names GitLab gave it there, grouped by project
    (one record per owner and project, however many files its page lists).
    """

    def __init__(self, records: Records) -> None:
        self._records = records

    def __repr__(self) -> str:
        return "Grants()"

    def salt(self) -> bytes:
        """A random secret for this cache, made once; salts the credential hashes."""
        self._records.add("salt", os.urandom(32))
        value = self._records.get("salt")
        assert isinstance(value, bytes)
        return value

    def bind(self, owner: str, files: Iterable[tuple[str, str]]) -> None:
        """Record that GitLab listed or served these (sha256, filename) pairs to `owner`."""
        projects: dict[str, set[str]] = {}
        for sha256, filename in files:
            projects.setdefault(project_of(filename), set()).add(f"{sha256}/{filename}")
        for project, entries in projects.items():

            def merge(known: Any, entries: set[str] = entries) -> frozenset[str]:
                before = known if isinstance(known, frozenset) else frozenset()
                return before if entries <= before else before | entries

            self._records.update(f"bound|{owner}|{project}", merge)

    def is_bound(self, owner: str, sha256: str, filename: str) -> bool:
        """Whether GitLab listed or served this file under this name to `owner`."""
        entries = self._records.get(f"bound|{owner}|{project_of(filename)}")
        return isinstance(entries, frozenset) and f"{sha256}/{filename}" in entries

    def bindings(self) -> Iterator[tuple[str, frozenset[tuple[str, str]]]]:
        """Every (owner, {(sha256, filename)}) record, one per owner and project."""
        for key, entries in self._records.items("bound|"):
            owner = key.split("|")[1]
            if isinstance(entries, frozenset):
                pairs = (entry.partition("/") for entry in entries if isinstance(entry, str))
                yield owner, frozenset((sha256, name) for sha256, _, name in pairs)

    def add_sources(self, sources: Mapping[tuple[str, str], str]) -> None:
        """Record where (sha256, filename) pairs of followed public pages are fetched from."""
        for (sha256, filename), url in sources.items():
            if self._records.get(f"source|{sha256}/{filename}") != url:
                self._records.set(f"source|{sha256}/{filename}", url)

    def source(self, sha256: str, filename: str) -> str | None:
        """Where a followed public page said this file is, or None (a file of GitLab's)."""
        value = self._records.get(f"source|{sha256}/{filename}")
        return value if isinstance(value, str) else None

    def core_metadata(self, sha256: str) -> list[str]:
        """The sha256s of the core-metadata files followed pages gave for this wheel."""
        found = []
        for key, url in self._records.items(f"source|{sha256}/"):
            digest = str(url).partition("#sha256=")[2]
            if key.endswith(".metadata") and valid_sha256(digest):
                found.append(digest.lower())
        return found

    def see_public(self, sha256: str) -> None:
        """These bytes were fetched from a public index and verified: anyone may have them."""
        self._records.set(f"public|{sha256}", True)

    def seen_public(self, sha256: str) -> bool:
        """Whether these bytes were ever fetched from a public index and verified."""
        return self._records.get(f"public|{sha256}") is True

    def set_metadata(self, wheel: str, metadata: str) -> None:
        """The wheel's core metadata has this sha256 ("": the wheel has none)."""
        if self._records.get(f"meta|{wheel}") != metadata:
            self._records.set(f"meta|{wheel}", metadata)

    def metadata_of(self, wheel: str) -> str | None:
        """The sha256 of the wheel's core metadata, "" when it has none, None when unknown."""
        value = self._records.get(f"meta|{wheel}")
        return value if isinstance(value, str) else None

    def accept(self, credential: str, when: float) -> None:
        """GitLab accepted this (hashed) credential for its scope at `when`."""
        self._records.set(f"accepted|{credential}", when)

    def accepted(self, credential: str) -> float | None:
        """When GitLab last accepted this (hashed) credential, or None."""
        value = self._records.get(f"accepted|{credential}")
        return float(value) if isinstance(value, int | float) else None

    def refuse(self, owner: str, sha256: str, filename: str, *, ttl: float) -> None:
        """GitLab has no file of this name and sha256 for `owner`: don't ask for `ttl` s."""
        self._records.set(f"refused|{owner}|{sha256}/{filename}", True, expire=ttl)

    def refused(self, owner: str, sha256: str, filename: str) -> bool:
        """Whether GitLab recently said it has no such file for `owner`."""
        return self._records.get(f"refused|{owner}|{sha256}/{filename}") is True

    def size(self) -> tuple[int, int]:
        """(records, bytes) held."""
        return self._records.count(), self._records.volume()

    def prune(self, *, accepted_before: float) -> int:
        """Forget refusals past their time and credentials not accepted since a moment."""

        def keep(key: str, value: Any) -> bool:
            if key.startswith("accepted|"):
                return isinstance(value, int | float) and value >= accepted_before
            return True

        return self._records.prune(keep)

    def close(self) -> None:
        """Close the SQLite connection of this thread."""
        self._records.close()
