"""Where embedkit looks for the shared data: the docs' `../shared/data` is relative to where a command runs."""

from embedkit.paths import shared_data_dir


def test_shared_data_is_found_beside_the_working_folder(tmp_path, monkeypatch):
    # A checkout elsewhere (the docs tests' stand-in root, a clone in CI) must read the data beside the folder
    # the command runs in, as `../shared/data` in the docs reads, not the data beside the installed package.
    work, data = tmp_path / "work", tmp_path / "shared" / "data"
    work.mkdir()
    data.mkdir(parents=True)
    monkeypatch.delenv("EMBEDKIT_SHARED_DATA", raising=False)
    monkeypatch.chdir(work)
    assert shared_data_dir() == data
    override = tmp_path / "elsewhere"
    override.mkdir()
    monkeypatch.setenv("EMBEDKIT_SHARED_DATA", str(override))
    assert shared_data_dir() == override
