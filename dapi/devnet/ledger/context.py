"""What a message handler may read besides the inference module's store: the block, accounts and authz grants.

The chain's inference keeper reads account public keys (x/auth) and authz grants (x/authz) to check the
signatures of MsgStartInference and MsgFinishInference (reference/inference.md §2.2 step 3); the ledger
owns both, and hands them to the handlers of a block through a `BlockContext`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dapi.devnet.genesis import Grant
from dapi.devnet.ledger.records import Account

__all__ = ["BlockContext", "GrantKey", "live_grantees"]

GrantKey = tuple[str, str, str]  # (granter, grantee, message type URL)


def live_grantees(grants: Mapping[GrantKey, Grant], granter: str, type_url: str, now_ns: int) -> list[str]:
    """Addresses holding a grant from `granter` for `type_url` that is unexpired at `now_ns`, sorted."""
    return sorted(
        grantee for (g, grantee, url), grant in grants.items()
        if g == granter and url == type_url and grant.live_at(now_ns)
    )


@dataclass(frozen=True, slots=True)
class BlockContext:
    """The block being made (height, time in ns) and read access to accounts and authz grants."""

    height: int
    time_ns: int
    accounts: Mapping[str, Account]
    grants: Mapping[GrantKey, Grant]

    @property
    def time_ms(self) -> int:
        return self.time_ns // 1_000_000

    def account_key(self, address: str) -> bytes | None:
        """The account's public key (`GetAccountPubKey`), or None for an unknown account."""
        account = self.accounts.get(address)
        return account.public_key if account is not None else None

    def grantees(self, granter: str, type_url: str) -> list[str]:
        """Addresses holding an unexpired grant from `granter` for `type_url`, sorted."""
        return live_grantees(self.grants, granter, type_url, self.time_ns)

    def keys_with_grantees(self, granter: str, type_url: str) -> tuple[bytes, ...]:
        """The granter's account key and its grantees' keys (`GetAccountPubKeysWithGrantees`)."""
        keys = [self.account_key(granter), *(self.account_key(g) for g in self.grantees(granter, type_url))]
        return tuple(k for k in keys if k is not None)
