"""The chat page in headless Chromium (Playwright + Debian's chromium): chat, stream, rate."""

from __future__ import annotations

import json

from helpers import chromium_path

from oficina.workspace import connect


def test_chat_page_streams_and_records_a_rating(serve, tmp_path, isolated_workspace):
    from playwright.sync_api import expect, sync_playwright

    url = serve()
    exe = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(url + "/")
            expect(page.get_by_test_id("model")).to_have_value("tiny")
            page.get_by_test_id("input").fill("What does the yield statement do?")
            page.get_by_test_id("send").click()

            answer = page.get_by_test_id("answer").last
            expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
            text = answer.locator(".text").text_content()
            assert text, "empty answer"  # (a random tiny model may well answer in whitespace)
            # Streamed: the text arrived in several server-sent events, not one block.
            assert int(answer.get_attribute("data-chunks")) >= 2

            answer.get_by_test_id("thumbs-down").click()
            expect(answer.get_by_test_id("feedback-status")).to_have_text("saved (#1)")
            answer.get_by_test_id("correction").fill("It turns the function into a generator.")
            answer.get_by_test_id("save-correction").click()
            expect(answer.get_by_test_id("feedback-status")).to_contain_text("saved")
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
            assert not failed, failed  # nothing fetched from outside (no CDN)
        finally:
            browser.close()

    assert (tmp_path / "chat.png").stat().st_size > 1000
    con = connect()
    rows = [dict(r) for r in con.execute("SELECT * FROM feedback")]
    con.close()
    assert len(rows) == 1  # the correction updated the rating's record
    row = rows[0]
    assert row["model"] == "tiny" and row["rating"] == -1
    assert row["correction"] == "It turns the function into a generator."
    assert row["answer"] == text
    assert json.loads(row["prompt"]) == [
        {"role": "user", "content": "What does the yield statement do?"}
    ]
