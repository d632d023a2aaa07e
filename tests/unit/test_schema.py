"""Entity schemas (schema.py): fields, columns, indexes and stream routes, built once."""

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import attrs
import pytest

import fluxaorm
from fluxaorm.schema import EntitySchema, Index, build_schema, entity_name
from tests.models import CategoryEntity, Color, ProductEntity, UserEntity


def schema_error(cls: Any) -> fluxaorm.SchemaError:
    with pytest.raises(fluxaorm.SchemaError) as info:
        build_schema(cls)
    return info.value


def indexes(schema: EntitySchema) -> dict[str, tuple[bool, tuple[str, ...]]]:
    return {i.name: (i.unique, i.columns) for i in schema.indexes}


# -- entity kinds --------------------------------------------------------------------------


def test_dataclass_entity() -> None:
    """A dataclass becomes a schema: id first, table and pools defaulted."""
    schema = build_schema(UserEntity)
    assert schema.cls is UserEntity
    assert schema.name == "tests.models.UserEntity"
    assert schema.label == "UserEntity"
    assert schema.table == "UserEntity"
    assert (schema.mysql_pool, schema.redis_pool) == ("default", "default")
    assert schema.names == ("id", "name", "email")
    assert schema.data_names == ("name", "email")
    assert schema.id_column.name == "id"
    assert schema.has_fake_delete is False
    assert schema.indexes == ()


def test_id_is_moved_first() -> None:
    """The id column comes first whatever its place in the class."""

    @dataclass
    class IdLast:
        name: str = ""
        id: int = 0

    assert build_schema(IdLast).names == ("id", "name")


def test_entity_decorator_options() -> None:
    """@fluxaorm.entity sets the table name and both pools of the schema."""

    @fluxaorm.entity(table="users", mysql_pool="main", redis_pool="streams")
    @dataclass
    class Decorated:
        id: int = 0

    schema = build_schema(Decorated)
    assert (schema.table, schema.mysql_pool, schema.redis_pool) == (
        "users",
        "main",
        "streams",
    )
    assert schema.select_sql == "SELECT `id` FROM `users`"


def test_attrs_entity() -> None:
    """An attrs class is an entity too, with its metadata options and fake delete."""
    schema = build_schema(ProductEntity)
    assert schema.table == "products"
    assert schema.names == ("id", "sku", "shop", "price", "fake_delete")
    assert schema.by_name["sku"].sql_type == "varchar(32)"
    assert schema.by_name["price"].sql_type == "decimal(10,2)"
    assert schema.has_fake_delete is True
    assert schema.alive_sql == "`fake_delete` = 0"


def test_attrs_entity_with_factory_and_ignored_field() -> None:
    """attrs defaults and Factory defaults of ignored fields are used by load()."""

    @attrs.define
    class AttrsWithCache:
        id: int = 0
        name: str = ""
        cache: list[int] = attrs.field(factory=list, metadata={"orm": "ignore"})

    schema = build_schema(AttrsWithCache)
    assert schema.names == ("id", "name")
    loaded = schema.load((7, "x"))
    assert (loaded.id, loaded.name, loaded.cache) == (7, "x", [])
    assert schema.load((8, "y")).cache is not loaded.cache


def test_attrs_factory_taking_self_is_rejected() -> None:
    """An attrs Factory(takes_self=True) default is a SchemaError naming the field."""

    @attrs.define
    class TakesSelf:
        id: int = 0
        name: str = attrs.field(
            default=attrs.Factory(lambda self: "x", takes_self=True)
        )

    err = schema_error(TakesSelf)
    assert err.field == "name"
    assert "takes_self=True" in str(err)


def test_entity_name_is_module_and_qualname() -> None:
    """The event entity name is the module plus the qualified class name."""
    assert entity_name(UserEntity) == "tests.models.UserEntity"

    @dataclass
    class Local:
        id: int = 0

    assert entity_name(Local) == f"{__name__}.{Local.__qualname__}"


def test_slotted_dataclass_loads() -> None:
    """A dataclass with slots loads rows too."""

    @dataclass(slots=True)
    class Slotted:
        id: int = 0
        name: str = ""

    loaded = build_schema(Slotted).load((3, "a"))
    assert (loaded.id, loaded.name) == (3, "a")


def test_load_converts_database_values() -> None:
    """load() builds an entity without __init__, turning 0/1 into bools and values into enum members."""

    @dataclass
    class Converted:
        id: int = 0
        flag: bool = False
        color: Color = Color.RED
        note: str | None = None

        def __post_init__(self) -> None:
            raise AssertionError("load() must not call __init__")

    loaded = build_schema(Converted).load((1, 1, "green", None))
    assert loaded.flag is True
    assert loaded.color is Color.GREEN
    assert loaded.note is None


def test_precomputed_sql() -> None:
    """SELECT and INSERT fragments are rendered once, with quoted names."""
    schema = build_schema(UserEntity)
    assert schema.select_sql == "SELECT `id`,`name`,`email` FROM `UserEntity`"
    assert schema.insert_prefix == "INSERT INTO `UserEntity` (`name`,`email`) VALUES "
    assert schema.insert_prefix_with_id == (
        "INSERT INTO `UserEntity` (`id`,`name`,`email`) VALUES "
    )
    assert schema.alive_sql == ""


def test_get_values() -> None:
    """get_values/get_data_values read the column values of an entity in order."""
    schema = build_schema(UserEntity)
    user = UserEntity(id=5, name="Tom", email="t@x")
    assert schema.get_values(user) == (5, "Tom", "t@x")
    assert schema.get_data_values(user) == ("Tom", "t@x")

    @dataclass
    class OnlyId:
        id: int = 0

    assert build_schema(OnlyId).get_values(OnlyId(id=2)) == (2,)


def test_init_names() -> None:
    """init_names lists the fields accepted by __init__."""

    @dataclass
    class WithNoInit:
        id: int = 0
        name: str = ""
        computed: int = field(default=0, init=False)

    assert build_schema(WithNoInit).init_names == ("id", "name")


# -- invalid entities ---------------------------------------------------------------------------


def test_missing_id() -> None:
    """An entity without an id field is a SchemaError naming the entity."""

    @dataclass
    class NoId:
        name: str = ""

    err = schema_error(NoId)
    assert err.entity == NoId.__qualname__
    assert err.field is None
    assert "has no id field; add `id: int = 0`" in str(err)


def test_id_not_int() -> None:
    """An id that is not an int is a SchemaError naming entity and field."""

    @dataclass
    class StrId:
        id: str = ""

    err = schema_error(StrId)
    assert (err.entity, err.field) == (StrId.__qualname__, "id")
    assert "must be declared as int" in str(err)


def test_frozen_dataclass_rejected() -> None:
    """A frozen dataclass is a SchemaError: entities are edited in place."""

    @dataclass(frozen=True)
    class Frozen:
        id: int = 0

    assert "entities must be mutable; remove frozen=True" in str(schema_error(Frozen))


def test_frozen_attrs_rejected() -> None:
    """A frozen attrs class is a SchemaError too."""

    @attrs.frozen
    class FrozenAttrs:
        id: int = 0

    assert "use @attrs.define, not frozen" in str(schema_error(FrozenAttrs))


def test_plain_class_rejected() -> None:
    """A class that is neither a dataclass nor an attrs class is a SchemaError."""

    class NotAnEntity:
        id: int = 0

    message = str(schema_error(NotAnEntity))
    assert "is not a dataclass or an attrs class" in message
    assert "@dataclass or @attrs.define" in message


def test_instance_rejected() -> None:
    """Passing an instance instead of the class is a SchemaError."""
    assert "is not a class" in str(schema_error(UserEntity()))


def test_unresolvable_type_hint() -> None:
    """A type hint that cannot be resolved is a SchemaError naming the entity."""

    @dataclass
    class BadHint:
        id: int = 0
        other: "MissingType" = None  # type: ignore[name-defined]  # noqa: F821

    err = schema_error(BadHint)
    assert err.entity == BadHint.__qualname__
    assert "type hints cannot be resolved" in str(err)


def test_unsupported_field_type() -> None:
    """An unsupported field type is a SchemaError naming entity and field."""

    @dataclass
    class WithList:
        id: int = 0
        tags: list[str] = field(default_factory=list)

    err = schema_error(WithList)
    assert (err.entity, err.field) == (WithList.__qualname__, "tags")
    assert "is not supported" in str(err)


def test_ignored_field_needs_a_default() -> None:
    """An ignored field without a default is a SchemaError: it is never loaded."""

    @dataclass
    class IgnoredNoDefault:
        cache: dict[str, int] = field(metadata={"orm": "ignore"})
        id: int = 0

    err = schema_error(IgnoredNoDefault)
    assert err.field == "cache"
    assert "an ignored field needs a default" in str(err)


def test_ignored_fields_stay_out_of_the_table() -> None:
    """Ignored fields (any type) have no column and get their default on load."""

    @dataclass
    class WithIgnored:
        id: int = 0
        cache: dict[str, int] = field(default_factory=dict, metadata={"orm": "ignore"})
        note: object = fluxaorm.column(default="n/a", ignore=True)

    schema = build_schema(WithIgnored)
    assert schema.names == ("id",)
    loaded = schema.load((4,))
    assert (loaded.id, loaded.cache, loaded.note) == (4, {}, "n/a")


@pytest.mark.parametrize(
    "table", ["users; DROP TABLE x", "users\n", "9lives", "", "x" * 65, "naïve"]
)
def test_bad_table_name(table: str) -> None:
    """A table name that is not a plain identifier is a SchemaError."""

    @fluxaorm.entity(table=table)
    @dataclass
    class BadTable:
        id: int = 0

    assert "table name" in str(schema_error(BadTable))


def test_bad_field_name() -> None:
    """A field name that can't be a column name is a SchemaError."""
    BadField = dataclasses.make_dataclass(
        "BadField", [("id", int, 0), ("ñame", str, "")]
    )
    assert "field name 'ñame'" in str(schema_error(BadField))


# -- indexes ---------------------------------------------------------------------------------


def test_named_and_bare_indexes() -> None:
    """unique=name and index=name build named indexes; bare unique is named after the field."""

    @dataclass
    class Indexed:
        id: int = 0
        email: str = fluxaorm.column(default="", unique="email_idx")
        code: str = fluxaorm.column(default="", unique=True)
        city: str = field(default="", metadata={"orm": "index"})
        age: int = field(default=0, metadata={"orm": "index=age_idx"})

    assert indexes(build_schema(Indexed)) == {
        "email_idx": (True, ("email",)),
        "code": (True, ("code",)),
        "city": (False, ("city",)),
        "age_idx": (False, ("age",)),
    }


def test_multi_column_index_in_declaration_order() -> None:
    """Fields sharing an index name form one index, in declaration order."""

    @dataclass
    class Multi:
        id: int = 0
        a: int = fluxaorm.column(default=0, index="abc")
        b: int = fluxaorm.column(default=0, index="abc")
        c: int = fluxaorm.column(default=0, index="abc")

    assert build_schema(Multi).indexes == (Index("abc", False, ("a", "b", "c")),)


def test_multi_column_index_positions() -> None:
    """ "name:N" positions order the columns; unpositioned ones follow."""

    @dataclass
    class Positioned:
        id: int = 0
        a: int = fluxaorm.column(default=0, unique="u:3")
        b: int = fluxaorm.column(default=0, unique="u")
        c: int = fluxaorm.column(default=0, unique="u:1")
        d: int = fluxaorm.column(default=0, unique="u:2")

    assert build_schema(Positioned).indexes == (Index("u", True, ("c", "d", "a", "b")),)


def test_field_in_several_indexes() -> None:
    """A field can be part of several indexes."""

    @dataclass
    class Several:
        id: int = 0
        a: int = fluxaorm.column(default=0, index="x:2,y")
        b: int = fluxaorm.column(default=0, index="x:1", unique="z")

    assert indexes(build_schema(Several)) == {
        "x": (False, ("b", "a")),
        "y": (False, ("a",)),
        "z": (True, ("b",)),
    }


def test_duplicate_position_rejected() -> None:
    """Two fields at the same position of one index is a SchemaError."""

    @dataclass
    class SamePosition:
        id: int = 0
        a: int = fluxaorm.column(default=0, index="i:1")
        b: int = fluxaorm.column(default=0, index="i:1")

    assert "index 'i' has two fields at the same position" in str(
        schema_error(SamePosition)
    )


def test_field_listed_twice_in_an_index_rejected() -> None:
    """A field naming the same index twice is a SchemaError."""

    @dataclass
    class Twice:
        id: int = 0
        a: int = fluxaorm.column(default=0, index="i,i")

    assert "index 'i' lists a field twice" in str(schema_error(Twice))


def test_unique_and_index_with_one_name_rejected() -> None:
    """One name used both as unique= and index= is a SchemaError naming the field."""

    @dataclass
    class Conflict:
        id: int = 0
        a: int = fluxaorm.column(default=0, unique="ab")
        b: int = fluxaorm.column(default=0, index="ab")

    err = schema_error(Conflict)
    assert err.field == "b"
    assert "declared both as unique= and index=" in str(err)


@pytest.mark.parametrize("name", ["PRIMARY", "primary", "Primary"])
def test_primary_is_reserved(name: str) -> None:
    """PRIMARY (any case) can't name an index."""

    @dataclass
    class Primary:
        id: int = 0
        a: int = fluxaorm.column(default=0, unique=name)

    assert "PRIMARY is reserved" in str(schema_error(Primary))


def test_index_names_differing_in_case_rejected() -> None:
    """Index names that differ only in case clash (MySQL ignores the case)."""

    @dataclass
    class CaseClash:
        id: int = 0
        a: int = fluxaorm.column(default=0, index="Abc")
        b: int = fluxaorm.column(default=0, index="abc")

    err = schema_error(CaseClash)
    assert err.field == "b"
    assert "index 'abc' clashes with index 'Abc'" in str(err)


def test_fake_delete_joins_unique_indexes() -> None:
    """With fake delete, every unique index ends with fake_delete; plain indexes don't."""
    assert build_schema(ProductEntity).indexes == (
        Index("sku_idx", True, ("sku", "fake_delete")),
        Index("shop_price", False, ("shop", "price")),
    )

    @dataclass
    class AlreadyThere:
        id: int = 0
        a: int = fluxaorm.column(default=0, unique="u:2")
        fake_delete: bool = fluxaorm.column(default=False, unique="u:1")

    assert build_schema(AlreadyThere).indexes == (
        Index("u", True, ("fake_delete", "a")),
    )


def test_unique_index_without_fake_delete() -> None:
    """Without fake delete, unique indexes hold only their own fields."""

    @dataclass
    class NoFakeDelete:
        id: int = 0
        a: int = fluxaorm.column(default=0, unique="u")

    assert build_schema(NoFakeDelete).indexes == (Index("u", True, ("a",)),)


def test_ignored_field_indexes_are_rejected() -> None:
    """An ignored field can't take part in an index."""

    @dataclass
    class IgnoredIndexed:
        id: int = 0
        a: int = fluxaorm.column(default=0, ignore=True, unique="u")

    assert "ignore=true" in str(schema_error(IgnoredIndexed))


# -- stream routes --------------------------------------------------------------------------------


def test_spec_user_routes() -> None:
    """The SPEC's UserEntity routes inserts, updates, deletes and email changes."""
    schema = build_schema(UserEntity)
    assert schema.insert_streams == ("AllChanges", "NewUsers", "EmailAddedOrChanged")
    assert schema.edit_streams == ("AllChanges",)
    assert schema.delete_streams == ("AllChanges", "DeletedUsers")
    assert schema.field_streams == {"email": ("EmailAddedOrChanged",)}
    assert schema.update_streams(("email",)) == ("AllChanges", "EmailAddedOrChanged")
    assert schema.update_streams(("name",)) == ("AllChanges",)
    assert schema.update_streams(("name", "email")) == (
        "AllChanges",
        "EmailAddedOrChanged",
    )
    assert schema.update_streams(()) == ("AllChanges",)
    assert schema.push_streams == ("AllChanges", "EmailAddedOrChanged")
    assert set(schema.streams) == {
        "AllChanges",
        "NewUsers",
        "DeletedUsers",
        "EmailAddedOrChanged",
    }


def test_spec_category_routes() -> None:
    """The SPEC's CategoryEntity streams insert and delete to CategoryAddedDeleted only."""
    schema = build_schema(CategoryEntity)
    assert schema.insert_streams == ("AllChanges", "CategoryAddedDeleted")
    assert schema.edit_streams == ("AllChanges",)
    assert schema.delete_streams == ("AllChanges", "CategoryAddedDeleted")
    assert schema.field_streams == {}
    assert schema.update_streams(("code",)) == ("AllChanges",)


def test_column_streams_only() -> None:
    """An entity streaming only field changes has no insert/delete/edit routes."""

    @dataclass
    class ColumnOnly:
        id: int = 0
        a: int = field(default=0, metadata={"orm": "dirty=A,Both"})
        b: int = field(default=0, metadata={"orm": "dirty=Both"})

    schema = build_schema(ColumnOnly)
    assert (schema.insert_streams, schema.edit_streams, schema.delete_streams) == (
        (),
        (),
        (),
    )
    assert schema.update_streams(("a",)) == ("A", "Both")
    assert schema.update_streams(("b",)) == ("Both",)
    assert schema.update_streams(("b", "a")) == ("Both", "A")
    assert schema.update_streams(()) == ()
    assert schema.push_streams == ("A", "Both")


def test_entity_without_streams() -> None:
    """An entity without dirty= options has no stream at all."""

    @dataclass
    class Quiet:
        id: int = 0
        a: int = 0

    schema = build_schema(Quiet)
    assert schema.streams == ()
    assert schema.update_streams(("a",)) == ()


def test_update_routes_are_stable() -> None:
    """Asking twice for the same change gives the same (cached) route."""
    schema = build_schema(UserEntity)
    first = schema.update_streams(("email",))
    assert schema.update_streams(("email",)) is first


def test_repr() -> None:
    """The schema's repr names the entity and table."""
    assert (
        repr(build_schema(UserEntity)) == "<EntitySchema UserEntity table='UserEntity'>"
    )


def test_decimal_defaults_survive() -> None:
    """Defaults of every kind stay on the class; the schema does not change them."""

    @dataclass
    class Priced:
        id: int = 0
        price: Decimal = Decimal("1.00")

    build_schema(Priced)
    assert Priced().price == Decimal("1.00")


def test_version_index_points_into_get_values() -> None:
    """EntitySchema.version_index is the version field's position in columns and get_values()."""

    @dataclass
    class Versioned:
        name: str = ""
        id: int = 0
        version: int = fluxaorm.column(version=True, default=0)
        note: str = ""

    schema = build_schema(Versioned)
    assert schema.version_index == 2
    assert schema.version_name == "version"
    assert schema.columns[2].name == "version"
    entity = Versioned(name="a", id=7, version=3, note="n")
    assert schema.get_values(entity)[schema.version_index] == 3
    assert "`version` bigint unsigned NOT NULL DEFAULT 0" in [
        c.definition for c in schema.columns
    ]


def test_version_tag_on_a_field() -> None:
    """The tag `version` marks the field too; entities without one have version_index None."""

    @dataclass
    class Tagged:
        id: int = 0
        rev: int = field(default=0, metadata={"orm": "version"})

    assert build_schema(Tagged).version_index == 1
    assert build_schema(UserEntity).version_index is None
    assert build_schema(UserEntity).version_name is None


def test_two_version_fields_rejected() -> None:
    """An entity with two version fields is a SchemaError naming the second."""

    @dataclass
    class Twice:
        id: int = 0
        a: int = fluxaorm.column(version=True, default=0)
        b: int = fluxaorm.column(version=True, default=0)

    err = schema_error(Twice)
    assert err.field == "b"
    assert "has 2 version fields (a, b)" in str(err)


def test_entity_name_option() -> None:
    """@fluxaorm.entity(name=...) is the schema's name (the entity of its events)."""

    @fluxaorm.entity(name="shop.User")
    @dataclass
    class Named:
        id: int = 0

    assert build_schema(Named).name == "shop.User"
    assert entity_name(Named) == "shop.User"
    assert build_schema(Named).label == Named.__qualname__


@pytest.mark.parametrize(
    "name", ["", "shop User", "shop.User\n", "tab\there", "\x00x", 5]
)
def test_bad_entity_names_rejected(name: Any) -> None:
    """An empty, non-printable, whitespace-holding or non-str entity name is a SchemaError."""

    @fluxaorm.entity(name=name)
    @dataclass
    class BadName:
        id: int = 0

    err = schema_error(BadName)
    assert err.entity == BadName.__qualname__
    assert "must be a non-empty printable str without whitespace" in str(err)


# -- the copy edit_entity makes ---------------------------------------------------------


def test_the_cheap_copy_is_the_one_copy_copy_makes() -> None:
    """A plain dataclass is copied through its __dict__: equal, not the same object,
    sharing the values (shallow), and a new attribute on the copy stays its own."""
    import copy as copy_module
    import dataclasses

    from fluxaorm.schema import _copier

    @dataclasses.dataclass
    class Plain:
        id: int = 0
        tags: list[str] = dataclasses.field(default_factory=list)

    original = Plain(3, ["a"])
    original.extra = "kept"  # type: ignore[attr-defined]
    fast = _copier(Plain, False)
    assert fast is not copy_module.copy
    dup = fast(original)
    assert dup is not original and dup.__dict__ == copy_module.copy(original).__dict__
    assert dup.tags is original.tags
    dup.id = 4
    assert original.id == 3

    class Sub(Plain):
        pass

    assert type(fast(Sub(1))) is Sub  # a subclass goes through copy.copy


def test_classes_with_their_own_copy_rules_keep_them() -> None:
    """Slots, __copy__, __getstate__ or __reduce__ of their own: copy.copy is used."""
    import copy as copy_module
    import dataclasses

    import attrs as attrs_module

    from fluxaorm.schema import _copier

    @attrs_module.define
    class Slotted:
        id: int = 0

    @dataclasses.dataclass
    class OwnCopy:
        id: int = 0

        def __copy__(self) -> "OwnCopy":
            return OwnCopy(-1)

    @dataclasses.dataclass
    class OwnState:
        id: int = 0

        def __getstate__(self) -> dict[str, int]:
            return {"id": 99}

    assert _copier(Slotted, True) is copy_module.copy
    assert _copier(OwnCopy, False)(OwnCopy(5)).id == -1
    assert _copier(OwnState, False)(OwnState(5)).id == 99
