"""``openai.OpenAI(base_url=…, api_key=…)`` against the reference router: answers, streams, refusals and
custom keys as the client sees them, each checked afterwards in Metering's billing API."""

from __future__ import annotations

import openai
import pytest

from demo.providers import CHAT_MODEL, HF_INFERENCE, MID_MODEL, SMALL_MODEL
from tests.clients.conftest import MESSAGES, World, assert_credits_used_up, in_thread, run_out_of_credits


def _client(world: World, user: str, **options: object) -> openai.OpenAI:
    # No retries: a refusal must reach the test once, as it reaches a person.
    return openai.OpenAI(base_url=f"{world.router_url}/v1", api_key=f"hf_test_{user}", max_retries=0, **options)


class TestServed:
    async def test_an_answer_billed_to_the_user(self, world: World) -> None:
        client = _client(world, "alice")
        completion = await in_thread(
            lambda: client.chat.completions.create(model=f"{CHAT_MODEL}:together", messages=MESSAGES)
        )
        assert completion.choices[0].message.content == "Hello from the simulator."
        assert completion.usage is not None and completion.usage.completion_tokens == 6
        await world.collected()
        [item] = await world.requests_of("alice", as_user="alice")
        cost = world.cost_of("together", completion.id)
        assert (item["request_id"], item["provider"], item["model"], item["user"]) == (
            completion.id,
            "together",
            CHAT_MODEL,
            "alice",
        )
        assert (item["status"], item["cost_nano_usd"], item["custom_key"]) == ("priced", cost, False)
        billing = await world.billing_of("alice", as_user="alice")
        assert (billing["credits_used_nano_usd"], billing["payg_nano_usd"]) == (cost, 0)

    async def test_a_stream_billed_to_the_org_with_a_preference_list(self, world: World) -> None:
        """fireworks-ai is first choice but switched off for acme: together serves, acme pays."""
        client = _client(world, "alice", default_headers={"X-HF-Bill-To": "acme"})

        def ask() -> list:
            stream = client.chat.completions.create(
                model=CHAT_MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"provider": "fireworks-ai together"},
            )
            return list(stream)

        chunks = await in_thread(ask)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == (
            "Hello from the simulator."
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 12
        request_id = chunks[0].id
        await world.collected()
        [record] = await world.records()
        assert (record.input_tokens, record.output_tokens) == (12, 6)
        [item] = await world.requests_of("acme", as_user="alice")
        cost = world.cost_of("together", request_id)
        assert (item["request_id"], item["provider"], item["user"], item["status"], item["cost_nano_usd"]) == (
            request_id,
            "together",
            "alice",
            "priced",
            cost,
        )
        assert (await world.billing_of("acme", as_user="alice"))["credits_used_nano_usd"] == cost
        assert await world.requests_of("alice", as_user="alice") == []
        assert world.inference_calls()["fireworks-ai"] == 0

    async def test_a_stream_left_after_its_first_chunk_is_still_billed(self, world: World) -> None:
        await world.providers["together"].set_faults(world.http, {"stream_chunk_delay_seconds": 0.2})
        client = _client(world, "alice")

        def first_chunk_then_leave() -> str:
            with client.chat.completions.create(
                model=f"{CHAT_MODEL}:together", messages=MESSAGES, stream=True, max_tokens=50
            ) as stream:
                return next(iter(stream)).id

        request_id = await in_thread(first_chunk_then_leave)
        for _ in range(100):  # the router records when it notices the client left
            await world.delivered()
            if await world.records():
                break
        await world.collected()
        [item] = await world.requests_of("alice", as_user="alice")
        assert (item["request_id"], item["status"]) == (request_id, "priced")
        assert item["cost_nano_usd"] == world.cost_of("together", request_id)

    async def test_a_stream_the_provider_cuts_raises_and_is_billed(self, world: World) -> None:
        await world.providers["together"].set_faults(world.http, {"cut_streams": 1, "cut_after_chunks": 2})
        client = _client(world, "alice")
        received: list[str] = []

        def read() -> None:
            for chunk in client.chat.completions.create(model=f"{CHAT_MODEL}:together", messages=MESSAGES, stream=True):
                received.append(chunk.id)

        with pytest.raises(openai.APIError, match="provider together cut the stream"):
            await in_thread(read)
        assert len(received) == 2
        await world.collected()
        [item] = await world.requests_of("alice", as_user="alice")
        assert (item["request_id"], item["status"]) == (received[0], "priced")
        assert item["cost_nano_usd"] == world.cost_of("together", received[0])

    async def test_a_custom_key_stream_is_recorded_and_not_charged(self, world: World) -> None:
        client = _client(world, "kai")
        chunks = await in_thread(
            lambda: list(client.chat.completions.create(model=f"{CHAT_MODEL}:together", messages=MESSAGES, stream=True))
        )
        await world.collected()
        [item] = await world.requests_of("kai", as_user="kai")
        assert (item["request_id"], item["status"], item["cost_nano_usd"], item["custom_key"]) == (
            chunks[0].id,
            "custom_key",
            None,
            True,
        )
        billing = await world.billing_of("kai", as_user="kai")
        assert (billing["credits_used_nano_usd"], billing["payg_nano_usd"], billing["held_nano_usd"]) == (0, 0, 0)

    async def test_the_model_list(self, world: World) -> None:
        client = _client(world, "alice")
        models = await in_thread(lambda: client.models.list().data)
        assert {model.id for model in models} == {CHAT_MODEL, SMALL_MODEL, MID_MODEL}


class TestRefused:
    async def test_a_free_user_out_of_credits_gets_a_402_with_our_message(self, world: World) -> None:
        client = _client(world, "mallory")

        def ask() -> str:
            return client.chat.completions.create(model=f"{MID_MODEL}:{HF_INFERENCE}", messages=MESSAGES).id

        served, error = await run_out_of_credits(world, ask, openai.APIStatusError)
        assert isinstance(error, openai.APIStatusError) and error.status_code == 402
        assert (error.code, error.type) == ("credits_exhausted", "billing_error")
        assert error.body["message"].startswith("mallory has no included credits left this month")
        await assert_credits_used_up(world, "mallory", served)

    async def test_a_provider_the_org_switched_off_is_a_permission_error(self, world: World) -> None:
        client = _client(world, "alice", default_headers={"X-HF-Bill-To": "acme"})
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await in_thread(
                lambda: client.chat.completions.create(model=f"{CHAT_MODEL}:fireworks-ai", messages=MESSAGES)
            )
        assert refused.value.code == "provider_disabled"
        assert refused.value.body["message"].startswith("acme has switched off fireworks-ai; an admin of acme")
        await world.collected()
        assert await world.requests_of("acme", as_user="alice") == []
        billing = await world.billing_of("acme", as_user="alice")
        assert (billing["disabled_providers"], billing["credits_used_nano_usd"], billing["held_nano_usd"]) == (
            ["fireworks-ai"],
            0,
            0,
        )
        assert world.inference_calls()["fireworks-ai"] == 0

    async def test_an_unknown_key_is_an_authentication_error(self, world: World) -> None:
        client = openai.OpenAI(base_url=f"{world.router_url}/v1", api_key="hf_nobody", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="invalid or missing token"):
            await in_thread(lambda: client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES))
        assert sum(world.inference_calls().values()) == 0
        await world.delivered()
        assert await world.records() == []
