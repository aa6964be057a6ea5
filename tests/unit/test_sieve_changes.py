"""sieve-sync's three-way rule: what users changed on the standby during an outage reaches the
primary, what the primary changed is never overwritten by the standby's older copy."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailcontinuity.mail.managesieve import Scripts
from mailcontinuity.sieve.replicate import standby_changes
from mailcontinuity.store.sieve import SyncedScripts, digest

FILTER = 'require "fileinto";\nfileinto "Lists";\n'
VACATION = 'require "vacation";\nvacation "Away until Monday";\n'


def base_of(scripts: Scripts) -> SyncedScripts:
    return SyncedScripts(scripts.active, {name: digest(text)
                                          for name, text in scripts.texts.items()})


def test_an_out_of_office_set_on_the_standby_goes_to_the_primary_and_is_activated() -> None:
    synced = Scripts("filters", {"filters": FILTER})
    standby = Scripts("roundcube", {"filters": FILTER, "roundcube": VACATION})
    returned, activate, conflicts = standby_changes(base_of(synced), synced, standby)
    assert returned == {"roundcube": VACATION} and activate == "roundcube" and conflicts == []


def test_a_change_on_the_primary_is_kept_and_nothing_goes_back() -> None:
    synced = Scripts("filters", {"filters": FILTER})
    primary = Scripts("filters", {"filters": FILTER + "stop;\n"})
    assert standby_changes(base_of(synced), primary, synced) == ({}, None, [])


def test_a_script_changed_on_both_sides_keeps_the_primarys_and_says_so() -> None:
    synced = Scripts("filters", {"filters": FILTER})
    primary = Scripts("filters", {"filters": FILTER + "stop;\n"})
    standby = Scripts("filters", {"filters": FILTER + "keep;\n"})
    returned, activate, conflicts = standby_changes(base_of(synced), primary, standby)
    assert returned == {} and activate is None
    assert len(conflicts) == 1 and "'filters'" in conflicts[0]


def test_deactivating_on_the_standby_deactivates_on_the_primary() -> None:
    synced = Scripts("roundcube", {"roundcube": VACATION})
    standby = Scripts(None, {"roundcube": VACATION})
    assert standby_changes(base_of(synced), synced, standby) == ({}, "", [])


texts = st.sampled_from([FILTER, VACATION, FILTER + "stop;\n"])
script_sets = st.builds(
    lambda names, active: Scripts(active if active in names else None, names),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), texts, max_size=3),
    st.sampled_from(["a", "b", "c", None]))


@given(script_sets, script_sets)
def test_nothing_goes_back_when_the_standby_did_not_change(synced: Scripts,
                                                           primary: Scripts) -> None:
    assert standby_changes(base_of(synced), primary, synced) == ({}, None, [])


@given(script_sets, script_sets)
def test_with_the_primary_unchanged_the_standby_wins_and_never_conflicts(
        synced: Scripts, standby: Scripts) -> None:
    returned, activate, conflicts = standby_changes(base_of(synced), synced, standby)
    assert conflicts == []
    merged = {**synced.texts, **returned}
    assert all(merged[name] == text for name, text in standby.texts.items())
