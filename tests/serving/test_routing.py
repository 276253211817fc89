"""The routing key: one per user, whatever the user's history; the caller's id where given; none where the contract
names no user inputs."""

from dataclasses import replace

from compiler.core.contract import stca_contract
from compiler.serving.routing import USER_KEY_HEADER, nginx_variable, user_key
from compiler.stca.model import STCAConfig

CONTRACT = stca_contract(STCAConfig())


def request(history: int, seed: int) -> dict:
    return CONTRACT.generate(CONTRACT.sizes(history=history, candidates=4), seed=seed)


def test_a_users_key_follows_the_profile_not_the_history():
    first, later = request(10, seed=1), request(30, seed=2)
    later["user_features"] = first["user_features"].copy()
    assert CONTRACT.user_inputs == ("user_features",)
    assert user_key(first, CONTRACT) == user_key(later, CONTRACT)
    other = dict(first, user_features=first["user_features"] + 1)
    assert user_key(other, CONTRACT) != user_key(first, CONTRACT)
    assert len(user_key(first, CONTRACT)) == 16


def test_the_callers_id_wins_and_a_contract_without_user_inputs_gives_no_key():
    assert user_key(request(5, seed=3), CONTRACT, user_id=42) == "42"
    history_only = replace(CONTRACT, inputs=tuple(i for i in CONTRACT.inputs if i.name != "user_features"))
    assert history_only.user_inputs == ()
    assert user_key(request(5, seed=3), history_only) == ""


def test_the_nginx_variable_names_the_header():
    assert USER_KEY_HEADER == USER_KEY_HEADER.lower()  # gRPC metadata keys are lower case
    assert nginx_variable() == "$http_stca_user_key"
