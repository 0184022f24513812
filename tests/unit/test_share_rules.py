"""Who may share a server with whom: your own groups or their members, access only, links of a
minute to a week; every other request is refused with a message that says why."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labgpu.web.share_rules import (
    ShareRefused,
    ShareTarget,
    check_share,
    link_lifetime,
    parse_server,
    parse_target,
    server_scope,
    shareable_members,
)

MEMBERS = {"vision-lab": ["alice", "bob"], "nlp-lab": ["alice", "hana"], "robotics": ["carol", "dave"]}


def test_alice_may_share_with_her_groups_and_their_members():
    check_share("alice", ("nlp-lab", "vision-lab"), ShareTarget("group", "vision-lab"), MEMBERS)
    check_share("alice", ("nlp-lab", "vision-lab"), ShareTarget("user", "bob"), MEMBERS)
    check_share("alice", ("nlp-lab", "vision-lab"), ShareTarget("user", "hana"), MEMBERS)
    assert shareable_members("alice", ("nlp-lab", "vision-lab"), MEMBERS) == ["bob", "hana"]


@pytest.mark.parametrize(
    ("owner", "groups", "target", "message", "status"),
    [
        (
            "carol",
            ("robotics",),
            ShareTarget("group", "vision-lab"),
            "You can share your server only with your own groups; you are not in 'vision-lab'. "
            "Your groups: robotics. For someone else, make a share link.",
            403,
        ),
        (
            "carol",
            ("robotics",),
            ShareTarget("user", "bob"),
            "You can share your server only with members of your groups; 'bob' is in none of robotics. "
            "For someone else, make a share link.",
            403,
        ),
        (
            "eve",
            (),
            ShareTarget("user", "bob"),
            "You can share your server only with members of your groups; 'bob' is in none of your groups "
            "(you are in none). For someone else, make a share link.",
            403,
        ),
        ("alice", ("vision-lab",), ShareTarget("user", "alice"), "You cannot share a server with yourself.", 400),
    ],
)
def test_anything_else_is_refused_saying_why(owner, groups, target, message, status):
    with pytest.raises(ShareRefused) as refused:
        check_share(owner, groups, target, MEMBERS)
    assert (str(refused.value), refused.value.status) == (message, status)


def test_a_share_grants_access_to_that_one_server_only():
    assert server_scope("alice", "") == "access:servers!server=alice/"
    assert ShareTarget("group", "vision-lab").as_hub_body() == {"group": "vision-lab"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'Say whom to share with: {"user": NAME} or {"group": NAME} (one of them).'),
        (
            {"user": "bob", "group": "vision-lab"},
            'Say whom to share with: {"user": NAME} or {"group": NAME} (one of them).',
        ),
        ({"user": ["bob"]}, "User must be a name, not ['bob']."),
        ({"group": "../admin"}, "Group must be a name, not '../admin'."),
    ],
)
def test_a_target_is_one_user_or_one_group_by_name(body, message):
    with pytest.raises(ShareRefused, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_target(body)


def test_scopes_in_a_request_are_never_read():
    # Whatever the request says about scopes, the target is all that is taken from it.
    assert parse_target({"group": "vision-lab", "scopes": ["admin:users"]}) == ShareTarget("group", "vision-lab")


def test_server_names_and_link_lifetimes():
    assert parse_server(None) == parse_server("") == ""
    assert parse_server("lab2") == "lab2"
    with pytest.raises(ShareRefused, match="Server must be the name of one of your servers"):
        parse_server("a/b")
    assert link_lifetime("1 day") == 86400
    assert link_lifetime("3600") == link_lifetime(3600) == 3600
    for bad in (59, 8 * 86400, True, "forever", 1.5):
        with pytest.raises(ShareRefused):
            link_lifetime(bad)


@given(st.dictionaries(st.sampled_from(["user", "group", "server", "scopes", "x"]), st.from_type(object) | st.text()))
def test_no_request_body_makes_anything_but_a_target_or_a_refusal(body):
    try:
        target = parse_target(body)
    except ShareRefused as e:
        assert e.status == 400
    else:
        assert target.kind in ("user", "group") and target.name == body[target.kind]
