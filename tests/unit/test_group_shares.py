"""A server shared with a group opens for the group's members' tokens (JupyterHub 6.1 counts group
shares for users but not for their tokens; labgpu/hub/group_shares.py adds them)."""

from __future__ import annotations

import pytest

orm = pytest.importorskip("jupyterhub.orm")


@pytest.fixture
def hub_db():
    from jupyterhub import roles

    db = orm.new_session_factory("sqlite:///:memory:")()
    roles.create_role(db, {"name": "user", "scopes": ["self"]})
    alice, bob, carol = (orm.User(name=n) for n in ("alice", "bob", "carol"))
    group = orm.Group(name="vision-lab")
    db.add_all([alice, bob, carol, group, orm.OAuthClient(identifier="jupyterhub")])
    group.users.append(bob)
    db.commit()
    for user in (alice, bob, carol):
        roles.grant_role(db, user, "user")
    spawner = orm.Spawner(user=alice, name="")
    db.add(spawner)
    db.commit()
    orm.Share.grant(db, spawner, group)
    db.commit()
    yield db, bob, carol
    db.close()


def test_a_members_token_gets_the_group_share_and_an_outsiders_does_not(hub_db):
    from jupyterhub import scopes

    from labgpu.hub.group_shares import include_group_shares

    db, bob, carol = hub_db

    def token(user, scopes):
        return orm.APIToken.find(db, orm.APIToken.new(user=user, scopes=scopes))

    bob_token = token(bob, ["inherit"])
    carol_token = token(carol, ["inherit"])
    narrow = token(bob, ["read:users:name!user=bob"])
    if not getattr(scopes.get_scopes_for, "_labgpu_group_shares", False):
        # JupyterHub alone: the user has the group's share, their token does not (what this fixes).
        assert "access:servers!server=alice/" in scopes.get_scopes_for(bob)
        assert "access:servers!server=alice/" not in scopes.get_scopes_for(bob_token)
    include_group_shares()
    include_group_shares()  # installing twice changes nothing
    assert "access:servers!server=alice/" in scopes.get_scopes_for(bob)  # the user: JupyterHub's own
    assert "access:servers!server=alice/" in scopes.get_scopes_for(bob_token)  # the token: ours
    assert "access:servers!server=alice/" not in scopes.get_scopes_for(carol_token)
    assert "access:servers!server=alice/" not in scopes.get_scopes_for(narrow)  # never more than the token may
