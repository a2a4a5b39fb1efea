"""/v1/tokens (admin): create (the token is shown once), list, revoke; /v1/me."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cloud_stub import auth
from cloud_stub.api import models as m
from cloud_stub.api.deps import CallerDep, CloudDep, needs, via
from cloud_stub.auth import Permission as P

router = APIRouter(prefix="/v1", tags=["tokens"])


@router.get("/me", response_model=m.Me, summary="Who this token is and what it may do", **needs(P.READ))
def me(caller: CallerDep) -> m.Me:
    return m.Me(token_id=caller.token_id, name=caller.name, role=caller.role,  # type: ignore[arg-type]
                permissions=sorted(p.value for p in auth.ROLE_PERMISSIONS[auth.Role(caller.role)]))


@router.get("/tokens", response_model=list[m.Token], summary="List API tokens (never their secrets)",
            **needs(P.TOKENS_MANAGE))
def list_tokens(cloud: CloudDep, include_revoked: bool = False) -> list[m.Token]:
    return [m.Token(**auth.token_view(r)) for r in cloud.registry.tokens(include_revoked)]


@router.post("/tokens", status_code=201, response_model=m.TokenCreated, summary="Create an API token",
             description="The response is the only place the token appears; the cloud keeps only its hash.",
             **needs(P.TOKENS_MANAGE))
def create_token(body: m.TokenCreate, cloud: CloudDep, caller: CallerDep, request: Request) -> m.TokenCreated:
    row, token = auth.create_token(cloud.registry, body.name, body.role, actor=caller.actor, at=cloud.clock(),
                                   via=via(request))
    return m.TokenCreated(**row, token=token)


@router.delete("/tokens/{token_id}", response_model=m.Token, summary="Revoke an API token",
               description="Takes effect at the next request that presents it. Revoking twice is not an error.",
               **needs(P.TOKENS_MANAGE))
def revoke_token(token_id: int, cloud: CloudDep, caller: CallerDep, request: Request) -> m.Token:
    row = auth.revoke_token(cloud.registry, token_id, actor=caller.actor, at=cloud.clock(), via=via(request))
    return m.Token(**row)
