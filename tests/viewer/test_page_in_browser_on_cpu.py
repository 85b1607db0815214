"""``mem1 view``'s page in a real headless Chromium (Debian's chromium and chromium-driver, installed by `make test`):
the index and its filters, one episode under mem1 and full side by side, the DOM checked against the records."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from selenium.webdriver.support.wait import WebDriverWait

from verl_mem1.cli import main
from verl_mem1.viewer.load import load_episodes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "Chromium and chromedriver are not installed (`make browser` installs Debian's, as root)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the browser tests")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(eval_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("view")
    assert (
        main(["view", str(eval_runs["mem1"]), str(eval_runs["full"]), "--out", str(out), "--title", "viewer test"]) == 0
    )
    return out / "index.html"


def _select(driver, name, value):
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", f"filter-{name}")).select_by_value(value)


def test_index_lists_and_filters_the_episodes(browser, page):
    browser.get(page.as_uri())
    assert browser.title == "viewer test"
    rows = browser.find_elements("css selector", "tr.row")
    assert len(rows) == 4, "two tasks under two context policies"
    _select(browser, "policy", "mem1")
    assert len(browser.find_elements("css selector", "tr.row")) == 2
    _select(browser, "objectives", "2")
    rows = browser.find_elements("css selector", "tr.row")
    assert len(rows) == 1 and "stardust" in rows[0].text
    assert browser.find_element("id", "count").text == "1 of 4 episodes match"
    min_reward = browser.find_element("id", "filter-min-reward")
    min_reward.send_keys("3")  # EM is summed over objectives: 2 at most here
    assert browser.find_elements("css selector", "tr.row") == []


def test_an_episode_shows_what_was_kept_and_dropped(browser, page, eval_runs, tmp_path):
    records = {
        e.record.context_policy: e.record for e in load_episodes(list(eval_runs.values())) if e.record.id == "stardust"
    }
    mem1 = records["mem1"]
    browser.get(page.as_uri())
    _select(browser, "policy", "mem1")
    _select(browser, "objectives", "2")
    browser.find_element("css selector", "tr.row").click()
    columns = browser.find_elements("css selector", ".column")
    assert [c.get_attribute("data-policy") for c in columns] == ["mem1", "full"], "the same task side by side"
    turns = columns[0].find_elements("css selector", "section.turn")
    assert len(turns) == len(mem1.turns) == 4
    assert [int(t.get_attribute("data-context-tokens")) for t in turns] == [len(t.context_ids) for t in mem1.turns]
    kept_state = turns[1].find_element("css selector", ".span-state.kept-state")
    assert kept_state.text == f"<IS>{mem1.turns[0].internal_state}</IS>", "turn 2 saw turn 1's internal state"
    dropped = turns[2].find_element("css selector", "details.dropped")
    size = len(mem1.turns[0].generated_ids) + len(mem1.turns[0].observation_ids)
    assert int(dropped.get_attribute("data-dropped-tokens")) == size
    assert f"dropped at this turn: {size} tokens (turn 1)" in dropped.text
    assert mem1.turns[2].action["reason"] in turns[2].find_element("css selector", ".invalid").text
    full_turns = columns[1].find_elements("css selector", "section.turn")
    assert len(full_turns) == 4 and not columns[1].find_elements("css selector", "details.dropped")
    answer = turns[3].find_element("css selector", ".part.generated .span-answer")
    assert answer.text == "<answer>Neil Gaiman; Oklahoma</answer>"
    mask = browser.find_elements("css selector", ".mask img")
    if mask:  # the mask is drawn for one episode: the mem1 one with the most turns
        assert browser.execute_script("return arguments[0].naturalWidth", mask[0]) > 100
    shot = tmp_path / "episode.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    browser.find_element("link text", "all episodes").click()
    # the index is drawn on the hash change, after the click returns: wait for it (a loaded CI machine is slow)
    rows = WebDriverWait(browser, 30).until(lambda b: b.find_elements("css selector", "tr.row"))
    assert len(rows) == 1, "back to the index, the filters still apply"
    assert browser.find_element("id", "filter-policy").get_attribute("value") == "mem1"


def test_thousands_of_episodes_stay_usable(browser, eval_runs, tmp_path):
    rows = (eval_runs["mem1"] / "episodes.jsonl").read_text().splitlines()
    many = tmp_path / "many.jsonl"
    with many.open("w") as fh:
        for i in range(1500):
            row = json.loads(rows[i % len(rows)])
            row["id"] = f"{row['id']}-{i}"
            if i == 1:  # model output is data, never markup: it cannot close the page's script or open a comment
                row["final_answer"] = "</script><!--<script>alert(1)</script>"
            fh.write(json.dumps(row) + "\n")
        other = json.loads((eval_runs["full"] / "episodes.jsonl").read_text().splitlines()[0])
        other.update(id=f"{json.loads(rows[0])['id']}-0", questions=[f"Not {q}" for q in other["questions"]])
        fh.write(json.dumps(other) + "\n")  # episode 0's id, under full context, with other questions
    shutil.copy(eval_runs["mem1"] / "metrics.json", tmp_path / "metrics.json")
    out = tmp_path / "view"
    assert main(["view", str(many), "--out", str(out), "--mask-episode", json.loads(rows[0])["id"] + "-0"]) == 0
    browser.get((out / "index.html").as_uri())
    assert browser.find_element("id", "count").text.startswith("1501 of 1501 episodes match; the first 500")
    assert len(browser.find_elements("css selector", "tr.row")) == 500, "the index renders a page of rows, not all"
    assert not browser.find_elements("css selector", "section.turn"), "turns are built only when opened"
    browser.get((out / "index.html").as_uri() + "#episode=1498")
    assert len(browser.find_elements("css selector", "section.turn")) == 4
    browser.get((out / "index.html").as_uri() + "#episode=1")
    assert "</script><!--<script>alert(1)</script>" in browser.find_element("css selector", ".column .meta").text
    browser.get((out / "index.html").as_uri() + "#episode=0")
    assert len(browser.find_elements("css selector", ".column")) == 1, "an id alone does not make the same task"
    mask = browser.find_element("css selector", ".mask img")
    assert browser.execute_script("return arguments[0].naturalWidth", mask) > 100
    assert Path(out / "mask.png").exists()
