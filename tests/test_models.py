"""botocore model loading (s3pipefs/s3/models.py): other services still load, and the parsed-model
cache is used when it is ours, and ignored when it is stale or anyone else could have written it."""
import http.server
import marshal
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import botocore.loaders
import pytest

from s3pipefs.config import S3Config
from s3pipefs.s3.models import ModelCache, S3FirstLoader, cache_file_name
from s3pipefs.s3 import Store


class _StsStub(http.server.BaseHTTPRequestHandler):
    """AssumeRole answered with the local server's own key pair as the role's credentials."""
    keys: tuple[str, str] = ("", "")
    calls: list[str] = []
    deny = False

    def do_POST(self):  # noqa: N802 - http.server's naming
        request = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.calls.append(request)
        if self.deny:
            body = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                    b"<Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to "
                    b"perform: sts:AssumeRole</Message></Error><RequestId>1</RequestId></ErrorResponse>")
            self.send_response(403)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        action = "AssumeRoleWithWebIdentity" if "Action=AssumeRoleWithWebIdentity" in request else "AssumeRole"
        expires = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        # An empty session token: the local server knows no STS, so none may be sent.
        body = (
            f'<{action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><{action}Result>'
            f"<Credentials><AccessKeyId>{self.keys[0]}</AccessKeyId><SecretAccessKey>{self.keys[1]}"
            f"</SecretAccessKey><SessionToken></SessionToken><Expiration>{expires}</Expiration>"
            "</Credentials><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/backup/s</Arn>"
            f"<AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId></AssumedRoleUser></{action}Result>"
            f"</{action}Response>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def sts(s3_env):
    _StsStub.keys = (s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"])
    _StsStub.calls = []
    _StsStub.deny = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StsStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _StsStub.calls
    server.shutdown()
    server.server_close()


def test_a_profile_with_a_role_gets_its_credentials_from_sts(cli, bucket, s3_env, sts, tmp_path):
    # The credential chain creates an STS client through the same loader: a loader that knew
    # only "s3" failed every role profile with "Unknown service: 'sts'".
    endpoint, calls = sts
    config = tmp_path / "config"
    config.write_text("[profile base]\naws_access_key_id = AKIDNOTVALIDHERE0000\n"
                      "aws_secret_access_key = not-the-server-secret\n"
                      "[profile backup]\nrole_arn = arn:aws:iam::123456789012:role/backup\n"
                      "source_profile = base\nregion = us-east-1\n")
    env = {k: v for k, v in s3_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_CONFIG_FILE=str(config), AWS_ENDPOINT_URL_STS=endpoint)
    r = cli("put", "--profile", "backup", f"s3://{bucket}/x", input=b"through the role", env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert cli("cat", f"s3://{bucket}/x").stdout == b"through the role"
    assert len(calls) == 1 and "Action=AssumeRole" in calls[0]
    assert "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbackup" in calls[0]


def test_a_web_identity_role_works_as_on_kubernetes(cli, bucket, s3_env, sts, tmp_path):
    # EKS (IRSA) and other OIDC setups: AWS_ROLE_ARN plus a token file, through STS.
    endpoint, calls = sts
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")
    env = {k: v for k, v in s3_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_ROLE_ARN="arn:aws:iam::123456789012:role/pod", AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
               AWS_ENDPOINT_URL_STS=endpoint)
    r = subprocess.run([sys.executable, "-m", "s3pipefs", "put", f"s3://{bucket}/y"], input=b"from a pod",
                       env=env, capture_output=True, timeout=120)  # not cli(): it adds the keys back
    assert r.returncode == 0, r.stderr.decode()
    assert cli("cat", f"s3://{bucket}/y").stdout == b"from a pod"
    assert len(calls) == 1 and "Action=AssumeRoleWithWebIdentity" in calls[0]
    assert "WebIdentityToken=eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl" in calls[0]


def test_a_role_profile_whose_sts_is_down_fails_in_plain_words(cli, bucket, s3_env, tmp_path):
    config = tmp_path / "config"
    config.write_text("[profile base]\naws_access_key_id = AKIDNOTVALIDHERE0000\n"
                      "aws_secret_access_key = x\n[profile backup]\n"
                      "role_arn = arn:aws:iam::123456789012:role/backup\nsource_profile = base\n")
    env = {k: v for k, v in s3_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_CONFIG_FILE=str(config), AWS_ENDPOINT_URL_STS="http://127.0.0.1:9")
    r = cli("ls", "--profile", "backup", f"s3://{bucket}/", env=env)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "s3pipefs: AWS credentials (profile backup): cannot reach http://127.0.0.1:9/"


def test_a_role_that_may_not_be_assumed_is_named_as_a_credentials_problem(cli, bucket, s3_env, sts, tmp_path):
    endpoint, calls = sts
    _StsStub.deny = True
    config = tmp_path / "config"
    config.write_text("[profile base]\naws_access_key_id = AKIDNOTVALIDHERE0000\n"
                      "aws_secret_access_key = x\n[profile backup]\n"
                      "role_arn = arn:aws:iam::123456789012:role/backup\nsource_profile = base\n")
    r = cli("put", "--profile", "backup", f"s3://{bucket}/z", input=b"never",
            env={"AWS_CONFIG_FILE": str(config), "AWS_ENDPOINT_URL_STS": endpoint})
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == ("s3pipefs: AWS credentials (profile backup): AccessDenied: "
                                    "User is not authorized to perform: sts:AssumeRole")
    assert calls and cli("info", f"s3://{bucket}/z").returncode == 1  # nothing was written


def _count_json_parses(monkeypatch) -> list[str]:
    parsed = []
    real = botocore.loaders.JSONFileLoader._load_file

    def counting(self, full_path, open_method):
        data = real(self, full_path, open_method)
        if data is not None:
            parsed.append(os.path.basename(full_path))
        return data

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "_load_file", counting)
    return parsed


def test_a_warm_cache_parses_no_json_and_the_client_works(s3_server, bucket, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("S3PIPEFS_CACHE_DIR", str(cache))
    parsed = _count_json_parses(monkeypatch)
    first = Store(S3Config(endpoint_url=s3_server.endpoint))
    first.put(bucket, "k", b"one")
    assert "service-2.json.gz" in parsed or "service-2.json" in parsed
    assert [p.name for p in cache.iterdir()] == [cache_file_name()]
    assert cache_file_name().startswith(f"botocore-{botocore.__version__}-py311-")
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in cache.iterdir())
    parsed.clear()
    second = Store(S3Config(endpoint_url=s3_server.endpoint))
    assert second.get(bucket, "k")[0] == b"one"
    assert parsed == []


def _model_file(tmp_path, text='{"v": 1}'):
    f = tmp_path / "models" / "thing.json"
    f.parent.mkdir(exist_ok=True)
    f.write_text(text)
    return str(f)


def test_a_changed_model_file_is_parsed_again(tmp_path):
    path = _model_file(tmp_path)
    cache = ModelCache(str(tmp_path / "c"))
    cache.put(path, {"v": 1})
    cache.save()
    assert ModelCache(str(tmp_path / "c")).get(path) == {"v": 1}
    _model_file(tmp_path, '{"v": 22}')  # other size: a new botocore, a user's own model
    assert ModelCache(str(tmp_path / "c")).get(path) is None


@pytest.mark.parametrize("how", ["dir group-writable", "file world-writable", "file not ours",
                                 "garbage", "wrong shape"])
def test_a_cache_anyone_else_could_have_written_or_that_is_broken_is_ignored(tmp_path, how):
    # A model decides where requests and credentials go: only our own private cache is read.
    path = _model_file(tmp_path)
    directory = tmp_path / "c"
    cache = ModelCache(str(directory))
    cache.put(path, {"v": 1})
    cache.save()
    (blob,) = directory.iterdir()
    if how == "dir group-writable":
        directory.chmod(0o770)
    elif how == "file world-writable":
        blob.chmod(0o606)
    elif how == "file not ours":
        os.chown(blob, 65534, 65534)
    elif how == "garbage":
        blob.write_bytes(b"\x00not marshal")
    else:
        blob.write_bytes(marshal.dumps([path, {"v": 1}]))
    assert ModelCache(str(directory)).get(path) is None
    loader = S3FirstLoader(cache=ModelCache(str(directory)))  # and botocore's models still load
    assert loader.load_service_model("s3", "service-2")["metadata"]["endpointPrefix"] == "s3"


def test_an_empty_cache_dir_setting_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("S3PIPEFS_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    loader = S3FirstLoader()
    loader.load_service_model("s3", "service-2")
    loader.model_cache.save()
    assert list(tmp_path.iterdir()) == []


def test_other_services_still_load(tmp_path):
    loader = S3FirstLoader(cache=ModelCache(str(tmp_path / "c")))
    assert loader.load_service_model("sts", "service-2")["metadata"]["endpointPrefix"] == "sts"
    assert "sts" in loader.list_available_services("service-2")


def test_what_botocore_changes_in_a_handed_out_model_is_not_saved(tmp_path):
    # botocore merges a service's "extras" into its model in place; the cache must keep
    # the file's own content when it is written again for another model.
    first, second = _model_file(tmp_path), str(tmp_path / "models" / "other.json")
    open(second, "w").write('{"w": 2}')
    directory = str(tmp_path / "c")
    cache = ModelCache(directory)
    cache.put(first, {"v": 1})
    cache.save()
    cache = ModelCache(directory)
    handed_out = cache.get(first)
    handed_out["merged"] = "by botocore"
    cache.put(second, {"w": 2})
    cache.save()
    again = ModelCache(directory)
    assert again.get(first) == {"v": 1} and again.get(second) == {"w": 2}


def test_each_botocore_installation_keeps_its_own_file_and_gone_models_leave_it(tmp_path, monkeypatch):
    # A file shared by every virtualenv grew with each one's entries, and each start-up
    # read them all.
    directory = tmp_path / "c"
    kept, gone, later = (str(tmp_path / "models" / n) for n in ("thing.json", "gone.json", "later.json"))
    _model_file(tmp_path)
    open(gone, "w").write('{"g": 1}')
    open(later, "w").write('{"l": 1}')
    cache = ModelCache(str(directory))
    cache.put(kept, {"v": 1})
    cache.put(gone, {"g": 1})
    cache.save()
    os.unlink(gone)
    cache = ModelCache(str(directory))
    cache.put(later, {"l": 1})
    cache.save()
    assert set(marshal.loads((directory / cache_file_name()).read_bytes())) == {kept, later}

    monkeypatch.setattr(botocore, "__file__", str(tmp_path / "venv2" / "botocore" / "__init__.py"))
    other = ModelCache(str(directory))
    assert other.get(kept) is None
    other.put(kept, {"v": 1})
    other.save()
    assert len(list(directory.iterdir())) == 2


def test_without_credentials_the_provider_chain_runs_once(monkeypatch, tmp_path):
    # The chain may probe instance metadata, a second of timeouts each time; checking the
    # credentials early must not run it again when it found none.
    import botocore.credentials

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    runs = []
    real = botocore.credentials.CredentialResolver.load_credentials
    monkeypatch.setattr(botocore.credentials.CredentialResolver, "load_credentials",
                        lambda self: runs.append(1) or real(self))
    Store(S3Config(endpoint_url="http://127.0.0.1:9")).client  # noqa: B018 - makes the client
    assert len(runs) == 1
