"""The ``"orm"`` metadata grammar (tags.py): tag strings, dicts, column(), entity()."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluxaorm
from fluxaorm.tags import (
    DIRTY_SOURCES,
    EntityOptions,
    FieldOptions,
    entity_options,
    parse_field_options,
)

ALL = DIRTY_SOURCES
OPTION_KEYS = (
    "dirty",
    "ignore",
    "index",
    "length",
    "precision",
    "scale",
    "size",
    "unique",
    "unsigned",
    "version",
)


def parse(raw: object, field_name: str = "email") -> FieldOptions:
    return parse_field_options(raw, "UserEntity", field_name)


def schema_error(raw: object, field_name: str = "email") -> fluxaorm.SchemaError:
    with pytest.raises(fluxaorm.SchemaError) as info:
        parse(raw, field_name)
    return info.value


def minimal_registry(*entities: type) -> fluxaorm.Registry:
    registry = fluxaorm.Registry()
    registry.register_mysql("mysql://root@127.0.0.1:3306/test")
    registry.register_redis("redis://127.0.0.1:6379/15")
    registry.register_entity(*entities)
    return registry


# -- the grammar ------------------------------------------------------------------


def test_no_metadata_means_no_options() -> None:
    """A field without "orm" metadata gets the default options."""
    assert parse(None) == FieldOptions()
    assert parse("") == FieldOptions()
    assert parse({}) == FieldOptions()


def test_tag_string_with_several_options() -> None:
    """A tag string holds ;-separated key=value pairs, spaces around them ignored."""
    options = parse(" dirty=A,B ; length=100;unique=email_idx ;", "email")
    assert options.dirty == (("A", ALL), ("B", ALL))
    assert options.length == 100
    assert options.unique == (("email_idx", 0),)
    assert options.index == ()
    assert options.ignore is False


def test_spec_tag_on_id() -> None:
    """The SPEC's id tag gives each stream its sources; a bare name means all three."""
    options = parse(
        "dirty=AllChanges,NewUsers:add,DeletedUsers:delete,EmailAddedOrChanged:add",
        "id",
    )
    assert options.dirty == (
        ("AllChanges", ALL),
        ("NewUsers", frozenset({"add"})),
        ("DeletedUsers", frozenset({"delete"})),
        ("EmailAddedOrChanged", frozenset({"add"})),
    )


@pytest.mark.parametrize(
    ("tag", "sources"),
    [
        ("dirty=S:add", {"add"}),
        ("dirty=S:edit", {"edit"}),
        ("dirty=S:delete", {"delete"}),
        ("dirty=S:add|delete", {"add", "delete"}),
        ("dirty=S: add | edit ", {"add", "edit"}),
        ("dirty=S:add|edit|delete", {"add", "edit", "delete"}),
        ("dirty=S", {"add", "edit", "delete"}),
    ],
)
def test_dirty_sources_on_id(tag: str, sources: set[str]) -> None:
    """On id, Name:source and sources joined by | select the operations streamed."""
    assert parse(tag, "id").dirty == (("S", frozenset(sources)),)


def test_dirty_bare_names_on_other_fields() -> None:
    """On a non-id field, bare names are accepted (updates changing the field)."""
    assert parse("dirty=Email-Changed,x_2", "email").dirty == (
        ("Email-Changed", ALL),
        ("x_2", ALL),
    )


def test_dirty_as_list_in_a_dict() -> None:
    """In a dict, dirty= may be a comma-separated string or a list of names."""
    assert parse({"dirty": ["A", "B:add"]}, "id").dirty == (
        ("A", ALL),
        ("B", frozenset({"add"})),
    )
    assert parse({"dirty": "A, B"}, "email").dirty == (("A", ALL), ("B", ALL))


@pytest.mark.parametrize(
    ("raw", "length"),
    [
        ("length=100", 100),
        ("length= 7 ", 7),
        ("length=max", 0),
        ("length=MAX", 0),
        ({"length": 65535}, 65535),
        ({"length": "max"}, 0),
        ({"length": "1"}, 1),
    ],
)
def test_length(raw: object, length: int) -> None:
    """length= takes 1..65535 or "max" (stored as 0, a MEDIUMTEXT/MEDIUMBLOB)."""
    assert parse(raw).length == length


def test_precision_and_scale() -> None:
    """precision= and scale= are parsed as whole numbers (scale may be 0)."""
    options = parse("precision=12;scale=0", "amount")
    assert (options.precision, options.scale) == (12, 0)
    assert parse({"precision": 65, "scale": 30}).precision == 65


@pytest.mark.parametrize(
    ("raw", "unsigned"),
    [
        ("unsigned", True),
        ("unsigned=true", True),
        ("unsigned=YES", True),
        ("unsigned=1", True),
        ("unsigned=on", True),
        ("unsigned=false", False),
        ("unsigned=0", False),
        ("unsigned=no", False),
        ({"unsigned": True}, True),
        ({"unsigned": False}, False),
    ],
)
def test_unsigned(raw: object, unsigned: bool) -> None:
    """unsigned is a flag: bare, true/false/1/0/yes/no/on/off, or a bool in a dict."""
    assert parse(raw, "age").unsigned is unsigned


@pytest.mark.parametrize("size", [8, 16, 24, 32, 64])
def test_size(size: int) -> None:
    """size= takes the MySQL integer widths in bits."""
    assert parse(f"size={size}", "age").size == size
    assert parse({"size": size}, "age").size == size


def test_ignore() -> None:
    """ignore (bare or =true) marks the field as not stored."""
    assert parse("ignore", "cache").ignore is True
    assert parse({"ignore": "true"}, "cache").ignore is True
    assert parse("ignore=false", "cache").ignore is False


@pytest.mark.parametrize("key", ["unique", "index"])
def test_index_names_and_positions(key: str) -> None:
    """unique=/index= take names, "name:2" sets the position, a bare key names it after the field."""
    assert getattr(parse(f"{key}=email_idx", "email"), key) == (("email_idx", 0),)
    assert getattr(parse(f"{key}=a:2,b", "email"), key) == (("a", 2), ("b", 0))
    assert getattr(parse(key, "email"), key) == (("email", 1),)
    assert getattr(parse({key: True}, "email"), key) == (("email", 1),)
    assert getattr(parse({key: False}, "email"), key) == ()
    assert getattr(parse({key: ["a:1", "b:3"]}, "email"), key) == (("a", 1), ("b", 3))


def test_tag_and_dict_are_equivalent() -> None:
    """A tag string and the dict of the same options parse to the same FieldOptions."""
    tag = "dirty=A;length=max;unique=u:2;index=i;unsigned=false;size=32;precision=9;scale=3"
    as_dict = {
        "dirty": "A",
        "length": "max",
        "unique": "u:2",
        "index": ["i"],
        "unsigned": False,
        "size": 32,
        "precision": 9,
        "scale": 3,
    }
    assert parse(tag) == parse(as_dict)


# -- column() and entity() -----------------------------------------------------------


def test_column_builds_dataclass_field_metadata() -> None:
    """column(**options) returns a dataclasses.field carrying the options as a dict."""

    @dataclass
    class ColumnEntity:
        id: int = 0
        name: str = fluxaorm.column(length=100, default="")
        tags: list[str] = fluxaorm.column(default_factory=list, ignore=True)
        code: str = fluxaorm.column(
            default="x", unique="code_idx", metadata={"other": 1}, repr=False
        )

    fields = {f.name: f for f in dataclasses.fields(ColumnEntity)}
    assert fields["name"].metadata["orm"] == {"length": 100}
    assert fields["name"].default == ""
    assert fields["tags"].metadata["orm"] == {"ignore": True}
    assert ColumnEntity().tags == []
    assert fields["code"].metadata["other"] == 1
    assert fields["code"].metadata["orm"] == {"unique": "code_idx"}
    assert fields["code"].repr is False
    assert parse(fields["name"].metadata["orm"]) == parse("length=100")


def test_column_passes_every_option() -> None:
    """column() records every option it is given and leaves out the ones it is not."""
    f = fluxaorm.column(
        default=0,
        length="max",
        precision=5,
        scale=1,
        unsigned=True,
        size=16,
        unique=True,
        index="i:2",
        dirty=["A", "B"],
    )
    assert f.metadata["orm"] == {
        "length": "max",
        "precision": 5,
        "scale": 1,
        "unsigned": True,
        "size": 16,
        "unique": True,
        "index": "i:2",
        "dirty": ["A", "B"],
    }
    assert fluxaorm.column().metadata["orm"] == {}


def test_column_in_an_entity_reaches_the_schema() -> None:
    """Options given through column() shape the column built by validate()."""

    @dataclass
    class ColumnSchemaEntity:
        id: int = 0
        name: str = fluxaorm.column(length=100, default="", unique=True)

    engine = minimal_registry(ColumnSchemaEntity).validate()
    schema = engine.schema(ColumnSchemaEntity)
    assert schema.by_name["name"].sql_type == "varchar(100)"
    assert [(i.name, i.unique, i.columns) for i in schema.indexes] == [
        ("name", True, ("name",))
    ]


def test_entity_decorator_sets_options() -> None:
    """@fluxaorm.entity records table and pools; undecorated classes get the defaults."""

    @fluxaorm.entity(table="users", mysql_pool="m", redis_pool="r")
    @dataclass
    class Decorated:
        id: int = 0

    @dataclass
    class Plain:
        id: int = 0

    assert entity_options(Decorated) == EntityOptions("users", "m", "r")
    assert entity_options(Plain) == EntityOptions(None, "default", "default")


def test_entity_options_are_not_inherited() -> None:
    """A subclass of a decorated entity does not inherit its table name."""

    @fluxaorm.entity(table="base_table")
    @dataclass
    class Base:
        id: int = 0

    @dataclass
    class Child(Base):
        extra: int = 0

    assert entity_options(Child).table is None


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_name", "raw", "fragment"),
    [
        # dirty=: sources, names, duplicates (SPEC §1.1)
        ("id", "dirty=A:update", "unknown source 'update'"),
        ("id", "dirty=A:add|remove", "unknown source 'remove'"),
        ("id", "dirty=A:", "unknown source ''"),
        ("id", "dirty=A:add|", "unknown source ''"),
        ("email", "dirty=A:add", "allowed only on the id field"),
        ("email", "dirty=A:edit", "write the bare name dirty=A"),
        ("id", "dirty=", "empty name"),
        ("id", "dirty", "must be a name"),
        ("id", "dirty=A,,B", "empty name"),
        ("id", "dirty=A,", "empty name"),
        ("id", "dirty=:add", "name is empty"),
        ("id", "dirty=A B", "'A B' must be letters, digits, '_' or '-' only"),
        ("id", "dirty=A.B", "must be letters, digits"),
        ("id", "dirty=Żółw", "must be letters, digits"),
        ("id", "dirty=A,B,A:add", "'A' is listed twice"),
        ("id", {"dirty": 5}, "must be a name"),
        ("id", {"dirty": ["A", 5]}, "must list names as strings"),
        ("id", {"dirty": {"A": "add"}}, "must be a name"),
        ("id", {"dirty": []}, "empty name"),
        # unknown options, with a suggestion
        ("name", "lenght=5", "unknown option 'lenght'; did you mean 'length'?"),
        ("name", "uniq=x", "did you mean 'unique'?"),
        ("name", "colour=red", "unknown option 'colour'"),
        ("name", {"Length": 5}, "did you mean 'length'?"),
        ("name", {1: 2}, "unknown option 1"),
        # bad values
        ("name", "length", "length must be a number, not True"),
        ("name", "length=abc", "whole number from 1 to 65535, not 'abc'"),
        ("name", "length=0", "whole number from 1 to 65535"),
        ("name", "length=65536", "whole number from 1 to 65535"),
        ("name", "length=-1", "whole number from 1 to 65535"),
        ("name", "length=1.5", "whole number"),
        ("name", "length=²", "whole number"),
        ("name", {"length": 10.0}, "whole number"),
        ("name", {"length": None}, "whole number"),
        ("name", {"length": False}, "must be a number"),
        ("amount", "precision=0", "precision must be a whole number from 1 to 65"),
        ("amount", "precision=66", "from 1 to 65"),
        ("amount", "scale=31", "scale must be a whole number from 0 to 30"),
        ("amount", "scale=-1", "from 0 to 30"),
        ("age", "size=12", "size must be one of 8, 16, 24, 32, 64 bits, not 12"),
        ("age", "size=128", "from 1 to 64"),
        ("age", "unsigned=maybe", "unsigned must be true or false, not 'maybe'"),
        ("age", {"unsigned": 1}, "unsigned must be true or false"),
        ("cache", "ignore=perhaps", "ignore must be true or false"),
        ("email", "unique=bad name", "index name 'bad name' must be 1-64 characters"),
        ("email", "unique=" + "x" * 65, "1-64 characters"),
        ("email", "index=a-b", "must be 1-64 characters of A-Z"),
        ("email", "unique=a:x", "unique position of 'a' must be a whole number"),
        ("email", "unique=a:0", "from 1 to 64"),
        ("email", "index=a:65", "from 1 to 64"),
        ("email", "index=,", "empty name"),
        ("email", {"unique": 3}, "must be a name"),
        # tag syntax
        ("email", "length=1;length=2", "option 'length' is given twice"),
        ("email", "=5", "has no key; write key=value"),
        ("email", 42, 'metadata["orm"] must be a tag string or a dict, not int'),
        ("email", b"length=5", "must be a tag string or a dict, not bytes"),
        # contradictions
        ("cache", "ignore;unique=u", "ignore=true keeps the field out of the table"),
        ("cache", {"ignore": True, "dirty": "A"}, "dirty would do nothing"),
    ],
)
def test_bad_options_raise_schema_error(
    field_name: str, raw: object, fragment: str
) -> None:
    """Every bad option raises SchemaError naming entity and field and what is wrong."""
    err = schema_error(raw, field_name)
    assert isinstance(err, ValueError)
    assert err.entity == "UserEntity"
    assert err.field == field_name
    assert str(err).startswith(f"UserEntity.{field_name}: ")
    assert fragment in str(err)


def test_unknown_option_lists_the_known_ones() -> None:
    """The unknown-option message lists every supported option."""
    message = str(schema_error("zzz=1"))
    for key in OPTION_KEYS:
        assert key in message


def test_validate_reports_tag_errors_with_entity_and_field() -> None:
    """Registry.validate() raises the tag's SchemaError located at entity and field."""

    @dataclass
    class BadTagEntity:
        id: int = 0
        email: str = field(default="", metadata={"orm": "dirty=Emails:add"})

    with pytest.raises(fluxaorm.SchemaError) as info:
        minimal_registry(BadTagEntity).validate()
    assert info.value.entity == BadTagEntity.__qualname__
    assert info.value.field == "email"
    assert str(info.value).startswith(f"{BadTagEntity.__qualname__}.email: ")
    assert "allowed only on the id field" in str(info.value)


# -- fuzzing ----------------------------------------------------------------------------

_FIELDS = st.sampled_from(["id", "email"])
_PIECE = st.one_of(
    st.sampled_from(OPTION_KEYS),
    st.sampled_from(["=", ";", ",", ":", "|", "max", "add", "edit", "delete", " "]),
    st.text(max_size=4),
    st.integers(-3, 70000).map(str),
)
_TAGS = st.one_of(st.text(), st.lists(_PIECE, max_size=12).map("".join))
_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.binary(),
        st.sampled_from(["max", "A:add", "a:2", "true", "A,B", "x:y"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children),
        st.frozensets(st.text(max_size=3), max_size=3),
        st.dictionaries(st.text(max_size=3), children, max_size=2),
    ),
    max_leaves=6,
)
_DICTS = st.dictionaries(
    st.one_of(st.sampled_from(OPTION_KEYS), st.text(max_size=6), st.integers()),
    _VALUES,
    max_size=4,
)


def _parses_or_locates(raw: object, field_name: str) -> None:
    try:
        result = parse_field_options(raw, "FuzzEntity", field_name)
    except fluxaorm.SchemaError as err:
        assert str(err).startswith(f"FuzzEntity.{field_name}: ")
        assert (err.entity, err.field) == ("FuzzEntity", field_name)
    else:
        assert isinstance(result, FieldOptions)


@given(_TAGS, _FIELDS)
def test_fuzz_tag_strings(tag: str, field_name: str) -> None:
    """Any text as a tag string parses or raises SchemaError naming entity and field."""
    _parses_or_locates(tag, field_name)


@given(_DICTS, _FIELDS)
def test_fuzz_dicts(raw: dict[Any, Any], field_name: str) -> None:
    """Any dict as "orm" metadata parses or raises SchemaError naming entity and field."""
    _parses_or_locates(raw, field_name)


# -- grammar traps (SPEC §1.1) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "field_name", "fragment"),
    [
        ("dirty=Orders:add,delete", "id", "write dirty=Orders:add|delete"),
        ("dirty=Orders:add|edit,edit", "id", "write dirty=Orders:add|edit|edit"),
        ("dirty=add", "id", "name the stream first, e.g. dirty=Orders:add"),
        ("dirty=Orders,delete", "id", "name the stream first"),
        ("dirty=edit", "email", "here dirty= takes stream names only"),
    ],
)
def test_source_word_as_stream_name_is_refused(
    tag: str, field_name: str, fragment: str
) -> None:
    """A stream named add, edit or delete (the slip Orders:add,delete) is a SchemaError saying what to write."""
    message = str(schema_error(tag, field_name))
    assert message.startswith(f"UserEntity.{field_name}: ")
    assert "is a source, not a stream name" in message
    assert fragment in message


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("dirty=dirty_Orders", "write dirty=Orders"),
        ("dirty=dirty_Orders:add", "(the Redis key would be dirty_dirty_Orders)"),
        ("dirty=dirty_", "write dirty=Name"),
    ],
)
def test_stream_name_with_the_dirty_prefix_is_refused(tag: str, fragment: str) -> None:
    """A stream name starting with dirty_ (which becomes dirty_dirty_X) is a SchemaError."""
    message = str(schema_error(tag, "id"))
    assert "starts with 'dirty_', which fluxaorm adds itself" in message
    assert fragment in message


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("dirty=A,,B", "has an empty name"),
        ("dirty=,A", "has an empty name"),
        ("dirty=:add", "dirty stream name is empty"),
        ("dirty=Or ders", "must be letters, digits, '_' or '-' only"),
        ("dirty=Orders.v2", "must be letters, digits, '_' or '-' only"),
        ("dirty=Zamówienia", "must be letters, digits, '_' or '-' only"),
    ],
)
def test_empty_or_bad_stream_names_are_refused(tag: str, fragment: str) -> None:
    """An empty stream name or one that is not [A-Za-z0-9_-]+ is a SchemaError with an example."""
    message = str(schema_error(tag, "id"))
    assert fragment in message
    assert "e.g." in message


def test_similar_names_stay_valid() -> None:
    """Names that only contain a source word or 'dirty' are ordinary stream names."""
    options = parse("dirty=Added,deleted_rows,Dirty_Orders,my-dirty_x", "id")
    assert [name for name, _ in options.dirty] == [
        "Added",
        "deleted_rows",
        "Dirty_Orders",
        "my-dirty_x",
    ]


def test_column_with_a_misspelt_option_is_located_at_validate() -> None:
    """column(dirtty=...) defines the class and validate() names entity, field and 'dirty'."""

    @dataclass
    class Misspelt:
        id: int = 0
        email: str = fluxaorm.column(default="", dirtty="Emails")  # type: ignore[call-arg]

    with pytest.raises(fluxaorm.SchemaError) as info:
        minimal_registry(Misspelt).validate()
    assert (info.value.entity, info.value.field) == (Misspelt.__qualname__, "email")
    assert "unknown option 'dirtty'; did you mean 'dirty'?" in str(info.value)


def test_column_still_passes_dataclass_field_options() -> None:
    """column() hands init=, repr=, compare= and kw_only= on to dataclasses.field."""

    @dataclass
    class Passed:
        id: int = 0
        note: str = fluxaorm.column(
            default="", repr=False, compare=False, kw_only=True, length=10
        )

    (note,) = [f for f in dataclasses.fields(Passed) if f.name == "note"]
    assert (note.repr, note.compare, note.kw_only) == (False, False, True)
    assert note.metadata["orm"] == {"length": 10}


@pytest.mark.parametrize(
    "raw", ["version", "version=true", {"version": True}, {"version": "yes"}]
)
def test_version_option(raw: object) -> None:
    """The version option is read from a bare tag, key=value and a dict."""
    assert parse(raw, "version").version is True
    assert parse("", "version").version is False


def test_column_version_sets_the_option() -> None:
    """fluxaorm.column(version=True) writes the version option into the metadata."""

    @dataclass
    class Versioned:
        id: int = 0
        version: int = fluxaorm.column(version=True, default=0)

    (f,) = [f for f in dataclasses.fields(Versioned) if f.name == "version"]
    assert f.metadata["orm"] == {"version": True}


def test_entity_decorator_sets_the_name() -> None:
    """@fluxaorm.entity(name=...) records the entity name; the default is None."""

    @fluxaorm.entity(name="shop.User")
    @dataclass
    class Named:
        id: int = 0

    assert entity_options(Named).name == "shop.User"
    assert EntityOptions().name is None
