"""Routes for any enabled identity (mTLS) and the router's self-registration."""

from __future__ import annotations

import threading

from cryptography import x509
from fastapi import APIRouter, Request

from umbranet.controller.api.context import AppContext
from umbranet.controller.api.convert import cert_pem, router_out
from umbranet.controller.api.deps import ClientCaller, Ctx, RouterCaller, peer_certificate_der
from umbranet.controller.service import (
    Forbidden,
    NotFound,
    addresses,
    enrollment,
    posture,
    routers,
    tickets,
    views,
)
from umbranet.controller.service.policy import active_policy
from umbranet.controller.service.relay import relay_tickets
from umbranet.controller.store import Identity, Service, Store
from umbranet.schema import (
    BundleUpdatesOut,
    EndpointIn,
    EndpointOut,
    ErrorBody,
    Intercept,
    MeOut,
    PeerKeyOut,
    PostureIn,
    PostureOut,
    RenewIn,
    RenewOut,
    RouterAddressOut,
    RouterOut,
    RouterSelfIn,
    ServiceActionsOut,
    TicketIn,
    TicketOut,
    ViewOut,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["client"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


def _identity(store: Store, caller_id: int) -> Identity:
    identity = store.session.get(Identity, caller_id)
    assert identity is not None  # authenticated a moment ago; rows are never deleted
    return identity


@router.post("/renew", response_model=RenewOut, responses={400: {"model": ErrorBody}})
def post_renew(body: RenewIn, ctx: Ctx, caller: ClientCaller) -> RenewOut:
    """A fresh certificate for the caller (same Noise key); the old one stays valid. The
    answer carries the current trust bundle as signed updates, so rotations reach every
    identity at its renewal."""
    now = ctx.clock()
    with ctx.transaction() as store:
        cert = enrollment.renew(
            store,
            ctx.authority,
            _identity(store, caller.id),
            csr_pem=body.csr_pem,
            noise_challenge=body.noise_challenge,
            noise_proof=body.noise_proof,
            now=now,
        )
    ctx.metrics.renewals.labels(kind=caller.kind).inc()
    return RenewOut(cert_pem=cert_pem(cert), bundle_updates=ctx.authority.bundle_updates(now))


@router.get("/bundle/updates", response_model=BundleUpdatesOut)
def get_bundle_updates(ctx: Ctx, caller: ClientCaller) -> BundleUpdatesOut:
    """The current trust bundle, signed by every ticket key the controller holds, for
    holders of an older bundle (after a rotation; see `controller.rotation`)."""
    authority = ctx.authority
    return BundleUpdatesOut(
        version=authority.bundle.version, updates=authority.bundle_updates(ctx.clock())
    )


@router.get("/me", response_model=MeOut, response_model_exclude_defaults=True)
def get_me(ctx: Ctx, caller: ClientCaller) -> MeOut:
    """Who the caller is and what it may do with which service.

    Each service also shows its intercepts (if any) and, to identities that may bind it, its
    host address: what an agent needs to intercept and to host it.
    """
    with ctx.transaction() as store:
        identity = _identity(store, caller.id)
        services = tickets.services_for(store, identity, metrics=ctx.metrics)
        rows = store.services_named([s.name for s in services])
        overlay = addresses.addresses_for(
            store, [identity], ctx.overlay, ctx.authority.trust_domain
        )[identity.id]
        return MeOut(
            name=identity.name,
            kind=identity.kind,
            spiffe_id=identity.spiffe_id,
            attributes=list(identity.attributes),
            services=[_service_actions(rows.get(s.name), s.name, s.actions) for s in services],
            ipv4=overlay.ipv4,
            ipv6=overlay.ipv6,
        )


@router.get("/view", response_model=ViewOut)
def get_view(ctx: Ctx, caller: ClientCaller) -> ViewOut:
    """The caller's filtered view: the services it may use, the peers (SPIFFE ID and Noise
    key) on the other side of them, and the HTTP rules of the services it hosts. For network
    mode each peer carries its overlay addresses, WireGuard endpoint, and what it may open
    towards the caller (``reach``)."""
    with ctx.transaction() as store:
        identity = _identity(store, caller.id)
        now = ctx.clock()
        view = views.view_of(
            store,
            identity,
            now=now,
            epoch=ctx.events.epoch,
            overlay=ctx.overlay,
            trust_domain=ctx.authority.trust_domain,
        )
        relays = relay_tickets(
            ctx.authority,
            identity,
            [p.noise_public_key for p in view.peers],
            now=now,
            epoch=ctx.events.epoch,
            cache=ctx.relay_tickets,
        )
    return ViewOut(
        services=view.services,
        peers=[
            PeerKeyOut(
                name=p.name,
                spiffe_id=p.spiffe_id,
                noise_public_key=p.noise_public_key,
                ipv4=p.ipv4,
                ipv6=p.ipv6,
                endpoint=p.endpoint,
                reach=list(p.reach),
                routes=list(p.routes),
                relay_ticket=relays.get(p.noise_public_key or ""),
            )
            for p in view.peers
        ],
        http=view.http,
    )


@router.put("/network/endpoint", response_model=EndpointOut, responses={400: {"model": ErrorBody}})
def put_network_endpoint(
    body: EndpointIn, request: Request, ctx: Ctx, caller: ClientCaller
) -> EndpointOut:
    """The caller's WireGuard device says where it listens (network mode); peers that policy
    lets talk to it receive this in their view. Without ``host``, the source address of this
    request is used (right when the controller and the peers see the device alike)."""
    host = body.host
    if host is None:
        host = request.client.host if request.client is not None else ""
    endpoint = addresses.parse_endpoint(host, body.port)
    with ctx.transaction() as store:
        identity = _identity(store, caller.id)
        addresses.addresses_for(store, [identity], ctx.overlay, ctx.authority.trust_domain)
        addresses.set_endpoint(store, identity, endpoint, now=ctx.clock())
    return EndpointOut(endpoint=endpoint)


def _service_actions(row: Service | None, name: str, actions: list[str]) -> ServiceActionsOut:
    out = ServiceActionsOut(name=name, actions=actions)
    if row is not None:
        if "bind" in actions:
            out.host_address = row.host_address
        out.intercepts = [Intercept.model_validate(i) for i in row.intercepts]
    return out


@router.post("/tickets", response_model=TicketOut)
def post_ticket(body: TicketIn, ctx: Ctx, caller: ClientCaller) -> TicketOut:
    """Ask to dial or bind a service: a signed ticket, or 403 ``not_authorized``.

    A refusal says nothing but a decision id: not which rule or attribute failed, and not
    whether the service exists (a name the caller may not see and a name nobody uses are
    refused alike). The reason is in the audit log under that id, for `umbra policy explain
    --id`.
    """
    now = ctx.clock()
    try:
        with ctx.transaction() as store:
            grant = tickets.issue_ticket(
                store,
                ctx.authority,
                _identity(store, caller.id),
                service=body.service,
                action=body.action,
                port=body.port,
                now=now,
                metrics=ctx.metrics,
                epoch=ctx.events.epoch,
            )
    except (Forbidden, NotFound) as exc:
        if exc.code not in {"not_authorized", "unknown_service"}:
            raise
        with ctx.transaction() as store:
            decision = ctx.deny_audit.record(
                store, caller.spiffe_id, body.service, body.action, exc.message, now=now
            )
        raise Forbidden(
            "not_authorized",
            f"not authorized to {body.action} this service (decision {decision}; an "
            "administrator can look it up)",
        ) from None
    ctx.metrics.tickets.labels(action=body.action).inc()
    return TicketOut(
        ticket=grant.ticket,
        expires_at=grant.expires_at,
        routers=[
            RouterAddressOut(name=r.name, spiffe_id=r.identity.spiffe_id, address=r.address)
            for r in grant.routers
            if r.address is not None
        ],
        http_rules=grant.http_rules,
    )


@router.post("/posture", response_model=PostureOut)
def post_posture(body: PostureIn, request: Request, ctx: Ctx, caller: ClientCaller) -> PostureOut:
    """The caller's endpoint reports its posture (OS, versions, processes).

    The controller adds the source address and the age of the certificate in use. If the
    report changes the outcome of a posture the policy names, the epoch is bumped at once, so
    live streams that no longer pass are closed and new tickets follow the new outcome.
    """
    now = ctx.clock()
    der = peer_certificate_der(request.scope)
    not_before = x509.load_der_x509_certificate(der).not_valid_before_utc if der else None
    source = request.client.host if request.client is not None else None
    with ctx.transaction() as store:
        identity = _identity(store, caller.id)
        before = posture.report_of(identity)
        changed = posture.record(
            identity, body.model_dump(), source_ip=source, cert_not_before=not_before, now=now
        )
        active = active_policy(store)
        compiled = active.compiled if active is not None else None
        moved = changed and posture.outcomes_differ(
            compiled, before, posture.report_of(identity), now
        )
    if moved:
        _posture_bump(ctx, caller.name, caller.spiffe_id)
    return PostureOut(changed=changed, rechecked=moved, epoch=ctx.events.epoch)


def _posture_bump(ctx: AppContext, name: str, spiffe_id: str) -> None:
    """Bump the epoch for this endpoint's grants only, at most once per limiter interval;
    a bump inside the interval is deferred to its end (coalesced), never dropped."""
    reason = f"posture of {name} changed"
    delay = ctx.posture_bumps.offer(spiffe_id, ctx.clock().timestamp())
    if delay is None:
        ctx.events.bump(reason, [spiffe_id])
    elif delay > 0:

        def deferred() -> None:
            ctx.posture_bumps.fired(spiffe_id, ctx.clock().timestamp())
            ctx.events.bump(reason, [spiffe_id])

        timer = threading.Timer(delay, deferred)
        timer.daemon = True
        timer.start()


@router.get("/routers", response_model=list[RouterOut])
def get_routers(ctx: Ctx, caller: ClientCaller) -> list[RouterOut]:
    """Every router and, once it registered, where it listens."""
    with ctx.transaction() as store:
        return [router_out(r) for r in routers.list_routers(store)]


@router.put("/routers/self", response_model=RouterOut, responses={400: {"model": ErrorBody}})
def put_router_self(body: RouterSelfIn, ctx: Ctx, caller: RouterCaller) -> RouterOut:
    """A router announces the address endpoints reach it at."""
    now = ctx.clock()
    with ctx.transaction() as store:
        row = routers.register_address(store, _identity(store, caller.id), body.address, now)
        return router_out(row)
