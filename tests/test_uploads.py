"""Only files Gradio stored as uploads are opened: every other path gets one message, decided before any read."""

import logging
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from eurosat import uploads
from eurosat.uploads import NO_IMAGE, NOT_AN_UPLOAD, PLAIN_STRING, URL_REFUSED, UploadError, uploaded_file

META = {"_type": "gradio.FileData"}
LIMIT = 10_000
HASH = "0b724e67435f7abd5a4bcba387dad5da4719ca3a27b21e3e5b86bac2f03c031f"  # Gradio's <sha256>/<name> layout


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (20, 120, 40)).save(path)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "gradio"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def upload(root) -> Path:
    return png(root / HASH / "tile.png")


@pytest.fixture
def outside(tmp_path) -> Path:
    """Another PNG on the server, beside the root but not in it."""
    return png(tmp_path / "elsewhere" / "secret.png")


def check(value, root, max_bytes: int = LIMIT) -> str:
    return uploaded_file(value, roots=[root], max_bytes=max_bytes).path


def refusal(value, root, **kwargs) -> str:
    """The message for `value`, from a thread: a check that blocked (on a FIFO, a terminal) fails instead of hanging."""
    outcome = {}

    def run():
        try:
            outcome["result"] = check(value, root, **kwargs)
        except UploadError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), f"uploaded_file({value!r}) blocked"
    assert "error" in outcome, f"uploaded_file({value!r}) accepted it: {outcome.get('result')!r}"
    return outcome["error"]


def test_an_upload_is_returned_with_or_without_meta(root, upload):
    assert check({"path": str(upload), "meta": META, "orig_name": "tile.png", "url": None}, root) == str(upload)
    assert check({"path": str(upload)}, root) == str(upload)


def test_files_of_a_second_root_are_accepted(root, tmp_path):
    example = png(tmp_path / "examples" / "Forest.png")
    roots = [root, tmp_path / "examples"]
    assert uploaded_file({"path": str(example)}, roots=roots, max_bytes=LIMIT).path == str(example)


def test_a_root_named_through_a_link_matches_both_spellings(root, upload, tmp_path):
    link = tmp_path / "gradio-link"
    link.symlink_to(root, target_is_directory=True)
    via_link = link / HASH / "tile.png"
    assert check({"path": str(via_link)}, link) == str(via_link)
    assert check({"path": str(upload)}, link) == str(via_link)


@pytest.mark.parametrize("value", [None, ""])
def test_no_image(root, value):
    assert refusal(value, root) == NO_IMAGE


def test_every_plain_string_gets_the_same_sentence(root, upload):
    strings = [str(upload), "/etc/passwd", "/no/such/file.png", "https://example.com/tile.png",
               "data:image/png;base64,iVBORw0KGgo=", "../tile.png", "\x00"]
    assert {refusal(s, root) for s in strings} == {PLAIN_STRING}
    assert "gradio_client.handle_file" in PLAIN_STRING


@pytest.mark.parametrize("url", ["https://example.com/tile.png", "HTTP://127.0.0.1:7860/gradio_api/file=/etc/passwd"])
def test_urls_that_gradio_would_download_are_refused(root, url):
    assert refusal({"path": url, "url": url, "meta": META}, root) == URL_REFUSED
    assert refusal({"path": url}, root) == URL_REFUSED


@pytest.mark.parametrize("value", [3, 2.5, True, b"/etc/passwd", ["/etc/passwd"], {},
                                   {"url": "https://example.com/a.png"}, {"path": 3}, {"path": ""}, {"path": None},
                                   {"path": "a\x00b"}, {"path": ["x"]}], ids=repr)
def test_other_values_are_not_uploads(root, value):
    assert refusal(value, root) == NOT_AN_UPLOAD


def hostile_paths(root: Path, upload: Path, outside: Path) -> dict[str, str]:
    """Paths an attacker can name, existing or not, each of them refused."""
    os.mkfifo(root / HASH / "pipe.png")
    (root / HASH / "out.png").symlink_to(outside)
    (root / HASH / "in.png").symlink_to(upload)
    (root / "dir-out").symlink_to(outside.parent, target_is_directory=True)
    (root / "dir-in").symlink_to(root / HASH, target_is_directory=True)
    return {
        "existing system file": "/etc/passwd",
        "unreadable system file": "/etc/shadow",
        "missing file": "/no/such/file.png",
        "null device": "/dev/null",
        "zero device": "/dev/zero",
        "console": "/dev/console",
        "another PNG on the server": str(outside),
        "dot-dot out of the root": f"{root}/../elsewhere/secret.png",
        "dot-dot from an upload folder": f"{root}/{HASH}/../../elsewhere/secret.png",
        "the root itself": str(root),
        "an upload folder": str(root / HASH),
        "a missing upload": str(root / HASH / "gone.png"),
        "a FIFO in the root": str(root / HASH / "pipe.png"),
        "a link in the root to a file outside": str(root / HASH / "out.png"),
        "a link in the root to an upload": str(root / HASH / "in.png"),
        "a linked folder pointing out": str(root / "dir-out" / "secret.png"),
        "a linked folder pointing in": str(root / "dir-in" / "tile.png"),
        "a relative path": f"{HASH}/tile.png",
    }


@pytest.mark.parametrize("meta", [True, False], ids=["with meta", "without meta"])
def test_hostile_paths_get_one_message_whether_or_not_they_exist(root, upload, outside, meta):
    for name, path in hostile_paths(root, upload, outside).items():
        value = {"path": path, "meta": META} if meta else {"path": path}
        assert refusal(value, root) == NOT_AN_UPLOAD, name
    assert check({"path": str(upload)}, root) == str(upload)  # the good file beside them is still fine


def test_a_fifo_is_refused_without_being_opened(root, upload, monkeypatch):
    fifo = root / HASH / "pipe.png"
    os.mkfifo(fifo)
    opened, real_open = [], os.open
    monkeypatch.setattr(uploads.os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    assert refusal({"path": str(fifo)}, root) == NOT_AN_UPLOAD
    assert opened == [str(root), HASH]  # the folders were opened to look inside, the FIFO itself never


def test_size_limit_is_checked_before_reading(root):
    exact = root / HASH / "exact.png"
    exact.parent.mkdir()
    exact.write_bytes(b"\x89PNG" + b"\0" * (LIMIT - 4))
    assert check({"path": str(exact)}, root) == str(exact)

    over = root / HASH / "over.png"
    over.write_bytes(b"\0" * (LIMIT + 1))
    over.chmod(0o200)  # write-only: a read would fail, so the size is known without one
    assert refusal({"path": str(over)}, root) == ("The file is 10,001 bytes, over this app's limit of 10,000 bytes: "
                                                  "upload a smaller image (a EuroSAT tile is a few kilobytes).")


@pytest.mark.parametrize("folder", ["root", "upload folder"])
def test_folders_others_can_write_are_refused_and_logged(root, upload, folder, caplog):
    target = root if folder == "root" else upload.parent
    target.chmod(0o777)
    try:
        with caplog.at_level(logging.WARNING, logger="eurosat.uploads"):
            assert refusal({"path": str(upload)}, root) == NOT_AN_UPLOAD
    finally:
        target.chmod(0o700)
    assert "anyone can write to it" in caplog.text and "GRADIO_TEMP_DIR" in caplog.text
    assert check({"path": str(upload)}, root) == str(upload)


def swap_before_open(monkeypatch, name: str, swap) -> None:
    """Run `swap()` just before uploads opens the file `name`: the race an lstat-then-open check would lose."""
    real_open = os.open

    def racing_open(path, flags, *args, **kwargs):
        if path == name:
            swap()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(uploads.os, "open", racing_open)


def test_a_link_swapped_in_after_the_check_is_not_followed(root, upload, tmp_path, monkeypatch):
    moved = tmp_path / "moved-out.png"

    def swap():  # the same file, now outside the root, reached through a link: only O_NOFOLLOW can tell
        os.replace(upload, moved)
        upload.symlink_to(moved)

    swap_before_open(monkeypatch, "tile.png", swap)
    assert refusal({"path": str(upload)}, root) == NOT_AN_UPLOAD


def test_another_file_swapped_in_after_the_check_is_refused(root, upload, monkeypatch):
    other = png(root / HASH / "other.png")
    swap_before_open(monkeypatch, "tile.png", lambda: os.replace(other, upload))
    assert refusal({"path": str(upload)}, root) == NOT_AN_UPLOAD


def test_through_gradio_only_real_uploads_pass(root, outside, monkeypatch, tmp_path):
    """A running Gradio app: what gradio_client uploads is accepted; a bare {"path": ...} to another file is not."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root))
    gr = pytest.importorskip("gradio")
    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    def handler(image):
        try:
            return uploaded_file(image, roots=[get_upload_folder()], max_bytes=LIMIT).path
        except UploadError as e:
            raise gr.Error(str(e), print_exception=False) from None

    with gr.Blocks() as demo:
        image, out = gr.Image(type="filepath"), gr.Textbox()
        gr.on([], handler, inputs=image, outputs=out, api_name="check", preprocess=False)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, analytics_enabled=False, download_files=False)
        path = Path(client.predict(handle_file(str(png(tmp_path / "mine.png"))), api_name="/check"))
        assert path.parent.parent == root and len(path.parent.name) == 64 and path.name == "mine.png"
        with pytest.raises(AppError) as error:
            client.predict({"path": str(outside)}, api_name="/check")
        assert str(error.value) == NOT_AN_UPLOAD
    finally:
        demo.close()
