"""Supervision trees for aura-actors actors (Erlang/OTP semantics in trio form)."""

__all__: list[str] = []
