//! The fixture workspace shared by the end-to-end tests (WORKSPACE mode, offline rules only).
//!
//! Its graph (`a -> b`: a lists b among its inputs):
//!
//! ```text
//! //app:app        -> //app:main.txt, //lib:exported.txt, //lib:upper_alias
//! //app:app_macro  -> //lib:selected                       (made by the text_gen macro)
//! //app:nested     -> //app:main.txt  (nested_gen in defs.bzl calls inner_gen in inner.bzl)
//! //app:leaf, //app:suite (test_suite)
//! //lib:upper_alias (alias) -> //lib:upper -> //lib:srcs (filegroup, glob data/*.txt)
//! //lib:selected   -> select(//lib:opt (config_setting): fast.txt, default: slow.txt)
//! //lib:lib_macro  -> //lib:macro_src.txt                  (made by the text_gen macro)
//! //lib:srcs and //lib:upper have visibility = [":friends"] (package_group, which
//!                  includes the package_group //lib:more_friends)
//! ```
//!
//! Every genrule output (`*.out`, `*.o`, `upper.txt`) is a GeneratedFile sharing its rule's
//! hash. BUILD files are SourceFile targets whose content is hashed, so any BUILD edit reports
//! that BUILD file itself (as upstream) even when no rule changes.

pub const WORKSPACE: &str = "workspace(name = \"fixture\")\n";

pub const BAZELRC: &str = "build --jobs=2\n";

pub const TOOLS_BUILD: &str = "exports_files([\"defs.bzl\"])\n";

pub const DEFS_BZL: &str = r#""""Macros of the fixture."""

load("//tools:inner.bzl", "inner_gen")

def nested_gen(name, src):
    """Calls a macro of another .bzl file."""
    inner_gen(name = name, src = src)

def text_gen(name, src, **kwargs):
    """A genrule that copies one file to `<name>.out`."""
    native.genrule(
        name = name,
        srcs = [src],
        outs = [name + ".out"],
        cmd = "cp $< $@",
        **kwargs
    )
"#;

pub const INNER_BZL: &str = r#""""The inner macro of nested_gen."""

def inner_gen(name, src):
    native.genrule(
        name = name,
        srcs = [src],
        outs = [name + ".o"],
        cmd = "cp $< $@",
    )
"#;

pub const LIB_BUILD: &str = r#"load("//tools:defs.bzl", "text_gen")

package_group(
    name = "friends",
    includes = [":more_friends"],
    packages = ["//app/..."],
)

package_group(
    name = "more_friends",
    packages = ["//tools/..."],
)

exports_files(["exported.txt"])

filegroup(
    name = "srcs",
    srcs = glob(["data/*.txt"]),
    visibility = [":friends"],
)

genrule(
    name = "upper",
    srcs = [":srcs"],
    outs = ["upper.txt"],
    cmd = "cat $(SRCS) | tr a-z A-Z > $@",
    visibility = [":friends"],
)

alias(
    name = "upper_alias",
    actual = ":upper",
    visibility = ["//visibility:public"],
)

config_setting(
    name = "opt",
    values = {"compilation_mode": "opt"},
)

genrule(
    name = "selected",
    srcs = select({
        ":opt": ["fast.txt"],
        "//conditions:default": ["slow.txt"],
    }),
    outs = ["selected.out"],
    cmd = "cp $< $@",
    visibility = ["//visibility:public"],
)

text_gen(
    name = "lib_macro",
    src = "macro_src.txt",
)
"#;

pub const APP_BUILD: &str = r#"load("//tools:defs.bzl", "nested_gen", "text_gen")

genrule(
    name = "app",
    srcs = [
        "main.txt",
        "//lib:exported.txt",
        "//lib:upper_alias",
    ],
    outs = ["app.out"],
    cmd = "cat $(SRCS) > $@",
)

text_gen(
    name = "app_macro",
    src = "//lib:selected",
)

genrule(
    name = "leaf",
    outs = ["leaf.out"],
    cmd = "echo leaf > $@",
)

test_suite(
    name = "suite",
    tags = ["manual"],
    tests = [],
)

nested_gen(
    name = "nested",
    src = "main.txt",
)
"#;

pub fn fixture_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("WORKSPACE", WORKSPACE),
        (".bazelrc", BAZELRC),
        ("tools/BUILD", TOOLS_BUILD),
        ("tools/defs.bzl", DEFS_BZL),
        ("tools/inner.bzl", INNER_BZL),
        ("lib/BUILD", LIB_BUILD),
        ("lib/data/a.txt", "a\n"),
        ("lib/data/b.txt", "b\n"),
        ("lib/exported.txt", "exported\n"),
        ("lib/fast.txt", "fast\n"),
        ("lib/slow.txt", "slow\n"),
        ("lib/macro_src.txt", "macro\n"),
        ("app/BUILD", APP_BUILD),
        ("app/main.txt", "main\n"),
    ]
}

/// Every main-repository target of the fixture at `base`, in code-unit order.
pub const ALL_MAIN_TARGETS: &[&str] = &[
    "//app:BUILD",
    "//app:app",
    "//app:app.out",
    "//app:app_macro",
    "//app:app_macro.out",
    "//app:leaf",
    "//app:leaf.out",
    "//app:main.txt",
    "//app:nested",
    "//app:nested.o",
    "//app:suite",
    "//lib:BUILD",
    "//lib:data/a.txt",
    "//lib:data/b.txt",
    "//lib:exported.txt",
    "//lib:fast.txt",
    "//lib:friends",
    "//lib:lib_macro",
    "//lib:lib_macro.out",
    "//lib:macro_src.txt",
    "//lib:more_friends",
    "//lib:opt",
    "//lib:selected",
    "//lib:selected.out",
    "//lib:slow.txt",
    "//lib:srcs",
    "//lib:upper",
    "//lib:upper.txt",
    "//lib:upper_alias",
    "//tools:BUILD",
    "//tools:defs.bzl",
];
