"""The JSONL format: every bad line is reported at once with file, line and field; imports and checks work."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from vlmgate.finetune.data import DataError, data_digest, read_jsonl, write_jsonl
from vlmgate.finetune.datacheck import check_files, leakage, near_duplicates


def _png(colour: str, size: int = 64) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), "white")
    img.paste(Image.new("RGB", (size // 2, size // 2), colour), (size // 4, size // 4))
    img.save(buf, "PNG")
    return buf.getvalue()


def _record(url: str, question: str = "What colour?", answer: str = "rouge") -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]}


def _write(path, lines) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(_png("red"))
    (tmp_path / "img" / "blue.png").write_bytes(_png("blue"))
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image at all")
    return tmp_path


def test_every_error_kind_is_reported_together_with_file_line_field(images):
    data = images / "train.jsonl"
    no_assistant = _record("img/red.png")
    no_assistant["messages"].pop()
    _write(
        data,
        [
            _record("img/red.png"),  # 1: valid
            "{not json",  # 2
            {"prompt": "hi"},  # 3: no messages
            _record("img/missing.png"),  # 4: missing image
            _record("img/broken.png"),  # 5: unreadable image
            no_assistant,  # 6: no assistant turn
            _record("data:image/png;base64,@@@"),  # 7: bad data URL
            _record("https://example.com/a.png"),  # 8: remote URL
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 9: bad role
            {
                "messages": [{"role": "user", "content": "<image><image>hi"}, {"role": "assistant", "content": "a"}],
                "images": ["img/red.png"],
            },  # 10: placeholder count  # fmt: skip
        ],
    )
    examples, issues = read_jsonl(data)
    assert len(examples) == 1
    found = {(i.line, i.field.split(".")[-1] if "." in i.field else i.field) for i in issues}
    by_line = {i.line: i for i in issues}
    assert set(by_line) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert "not valid JSON" in by_line[2].reason
    assert by_line[3].field == "messages"
    assert "missing image" in by_line[4].reason
    assert by_line[4].field == "messages[0].content[0].image_url.url"
    assert "unreadable image" in by_line[5].reason
    assert "no assistant turn" in by_line[6].reason
    assert "base64" in by_line[7].reason
    assert "download it" in by_line[8].reason
    assert (9, "role") in found
    assert any(i.line == 10 and "placeholder" in i.reason for i in issues)
    message = str(DataError(issues))
    assert f"{data}:4: messages[0].content[0].image_url.url: missing image" in message
    assert "9 problem(s)" in message or f"{len(issues)} problem(s)" in message


def test_llama_factory_sharegpt_and_data_urls_import(images):
    data = images / "mixed.jsonl"
    data_url = "data:image/png;base64," + base64.b64encode(_png("green")).decode()
    _write(
        data,
        [
            {
                "messages": [
                    {"role": "user", "content": "<image>What colour?"},
                    {"role": "assistant", "content": "rouge"},
                ],
                "images": ["img/red.png"],
            },  # fmt: skip
            {
                "conversations": [{"from": "human", "value": "Colour? <image>"}, {"from": "gpt", "value": "bleu"}],
                "images": ["img/blue.png"],
            },  # fmt: skip
            _record(data_url, answer="vert"),
        ],
    )
    examples, issues = read_jsonl(data)
    assert issues == []
    assert [e.answer for e in examples] == ["rouge", "bleu", "vert"]
    assert [len(e.images) for e in examples] == [1, 1, 1]
    assert examples[1].messages[0]["content"][1] == {"type": "image"}  # placeholder position kept
    assert examples[2].pil_images()[0].getpixel((32, 32)) == (0, 128, 0)
    # convert writes vlmgate's own format, which reads back identically
    out = images / "converted.jsonl"
    assert write_jsonl(examples, out) == 3
    again, issues = read_jsonl(out)
    assert issues == []
    assert [e.messages for e in again] == [e.messages for e in examples]
    assert [e.images for e in again] == [e.images for e in examples]


def test_digest_covers_referenced_images(images):
    data = images / "d.jsonl"
    _write(data, [_record("img/red.png")])
    before = data_digest(data)
    (images / "img" / "red.png").write_bytes(_png("orange"))
    assert data_digest(data) != before


def test_near_duplicates_and_leakage(images):
    (images / "img" / "red2.png").write_bytes(_png("red", size=96))  # same picture, other size
    train, held_out = images / "train.jsonl", images / "eval.jsonl"
    _write(train, [_record("img/red.png"), _record("img/blue.png", question="Which shape?"), _record("img/red2.png")])
    _write(held_out, [_record("img/red2.png"), _record("img/blue.png", question="Another question?")])
    train_ex, _ = read_jsonl(train)
    eval_ex, _ = read_jsonl(held_out)
    pairs = near_duplicates(train_ex, max_distance=6)
    assert [(a.line, b.line) for a, b, _ in pairs] == [(1, 3)]
    leaks = leakage(train_ex, eval_ex, max_distance=6)
    assert [(a.line, b.line) for a, b in leaks] == [(1, 1)]  # same question + same picture; line 2 differs
    report = check_files(train, held_out)
    text = report.render()
    assert "near-duplicate" in text
    assert "also in training" in text
    assert "distinct_answers" in text
