"""The registry (registry.py): collecting pools and entities, validate() and the engine's maps."""

from dataclasses import dataclass, field

import pytest

import fluxaorm
from fluxaorm.engine import StreamInfo
from tests.models import AllTypes, CategoryEntity, ProductEntity, UserEntity

# Nothing listens on port 1: validate() must succeed without connecting.
CLOSED_MYSQL = "mysql://root@127.0.0.1:1/test"
CLOSED_REDIS = "redis://127.0.0.1:1/15"
USER = "tests.models.UserEntity"
CATEGORY = "tests.models.CategoryEntity"


def registry(
    *entities: type, redis_pools: tuple[str, ...] = ("default",)
) -> fluxaorm.Registry:
    reg = fluxaorm.Registry()
    reg.register_mysql(CLOSED_MYSQL)
    for pool in redis_pools:
        reg.register_redis(CLOSED_REDIS, pool=pool)
    reg.register_entity(*entities)
    return reg


def schema_error(reg: fluxaorm.Registry) -> fluxaorm.SchemaError:
    with pytest.raises(fluxaorm.SchemaError) as info:
        reg.validate()
    return info.value


# -- validate --------------------------------------------------------------------------------


def test_validate_opens_no_connection() -> None:
    """validate() builds the engine from closed-port URLs: it never connects."""
    reg = registry(UserEntity, CategoryEntity, AllTypes, ProductEntity)
    with reg.validate() as engine:
        assert isinstance(engine, fluxaorm.Engine)
        assert engine.entities == (UserEntity, CategoryEntity, AllTypes, ProductEntity)
        assert engine.schema(UserEntity).table == "UserEntity"
        assert engine.schema(ProductEntity).table == "products"


def test_spec_example_has_exactly_five_streams() -> None:
    """The SPEC's two entities declare exactly five streams with the SPEC's sources."""
    engine = registry(UserEntity, CategoryEntity).validate()
    assert set(engine.streams) == {
        "AllChanges",
        "NewUsers",
        "DeletedUsers",
        "EmailAddedOrChanged",
        "CategoryAddedDeleted",
    }
    sources = {name: dict(engine.stream(name).sources) for name in engine.streams}
    assert sources == {
        "AllChanges": {
            USER: ("add", "edit", "delete"),
            CATEGORY: ("add", "edit", "delete"),
        },
        "NewUsers": {USER: ("add",)},
        "DeletedUsers": {USER: ("delete",)},
        "EmailAddedOrChanged": {USER: ("add", "field:email")},
        "CategoryAddedDeleted": {CATEGORY: ("add", "delete")},
    }


def test_stream_lookup() -> None:
    """engine.stream() finds a stream by name or by its dirty_ key."""
    engine = registry(UserEntity, CategoryEntity).validate()
    info = engine.stream("AllChanges")
    assert isinstance(info, StreamInfo)
    assert (info.name, info.key, info.redis_pool) == (
        "AllChanges",
        "dirty_AllChanges",
        "default",
    )
    assert engine.stream("dirty_AllChanges") == info
    assert engine.stream("dirty_NewUsers").key == "dirty_NewUsers"


def test_unknown_stream() -> None:
    """An undeclared stream name is a ConfigurationError listing the declared ones."""
    engine = registry(CategoryEntity).validate()
    with pytest.raises(fluxaorm.ConfigurationError) as info:
        engine.stream("Nope")
    assert "'Nope'" in str(info.value)
    assert "AllChanges, CategoryAddedDeleted" in str(info.value)
    with pytest.raises(fluxaorm.ConfigurationError):
        engine.stream("dirty_Nope")


def test_streams_on_another_redis_pool() -> None:
    """Streams of an entity live on its redis_pool."""

    @fluxaorm.entity(redis_pool="events")
    @dataclass
    class OnEvents:
        id: int = field(default=0, metadata={"orm": "dirty=Elsewhere"})

    engine = registry(OnEvents, redis_pools=("default", "events")).validate()
    assert engine.stream("Elsewhere").redis_pool == "events"


def test_unregistered_entity() -> None:
    """engine.schema() of an unregistered class is a ConfigurationError saying what to call."""
    engine = registry(UserEntity).validate()
    with pytest.raises(fluxaorm.ConfigurationError) as info:
        engine.schema(CategoryEntity)
    assert "CategoryEntity is not a registered entity" in str(info.value)
    assert "registry.register_entity(CategoryEntity)" in str(info.value)
    with pytest.raises(fluxaorm.ConfigurationError):
        engine.schema([])  # type: ignore[arg-type]


def test_schema_by_name() -> None:
    """schema_by_name() finds a schema by its event entity name, None when unknown."""
    engine = registry(UserEntity).validate()
    assert engine.schema_by_name(USER) is engine.schema(UserEntity)
    assert engine.schema_by_name("nope.Nope") is None


def test_unregistered_mysql_pool() -> None:
    """An entity on an unregistered MySQL pool is a SchemaError saying which register_mysql to call."""

    @fluxaorm.entity(mysql_pool="shop")
    @dataclass
    class InShop:
        id: int = 0

    err = schema_error(registry(InShop))
    assert err.entity == InShop.__qualname__
    assert "mysql_pool 'shop' is not registered" in str(err)
    assert "registry.register_mysql(url, pool='shop')" in str(err)


def test_unregistered_redis_pool() -> None:
    """An entity streaming to an unregistered Redis pool is a SchemaError saying which register_redis to call."""

    @fluxaorm.entity(redis_pool="streams")
    @dataclass
    class Streaming:
        id: int = field(default=0, metadata={"orm": "dirty=S"})

    err = schema_error(registry(Streaming))
    assert str(err).startswith(f"{Streaming.__qualname__}: ")
    assert "redis_pool 'streams'" in str(err)
    assert "registry.register_redis(url, pool='streams')" in str(err)


def test_no_redis_needed_without_streams() -> None:
    """An entity without streams needs no Redis pool."""

    @dataclass
    class Silent:
        id: int = 0

    reg = fluxaorm.Registry()
    reg.register_mysql(CLOSED_MYSQL)
    reg.register_entity(Silent)
    assert reg.validate().streams == ()


def test_default_pools_must_be_registered() -> None:
    """Without any register_mysql call, an entity is a SchemaError naming the default pool."""
    reg = fluxaorm.Registry()
    reg.register_entity(UserEntity)
    assert "mysql_pool 'default' is not registered" in str(schema_error(reg))


def test_two_entities_on_one_table() -> None:
    """Two entities on the same table (any case) of one pool is a SchemaError."""

    @fluxaorm.entity(table="things")
    @dataclass
    class First:
        id: int = 0

    @fluxaorm.entity(table="Things")
    @dataclass
    class Second:
        id: int = 0

    err = schema_error(registry(First, Second))
    assert err.entity == Second.__qualname__
    assert f"table 'Things' is already used by {First.__qualname__}" in str(err)


def test_same_table_on_two_pools() -> None:
    """The same table name on two MySQL pools is allowed."""

    @fluxaorm.entity(table="things")
    @dataclass
    class Here:
        id: int = 0

    @fluxaorm.entity(table="things", mysql_pool="other")
    @dataclass
    class There:
        id: int = 0

    reg = registry(Here, There)
    reg.register_mysql("mysql://root@127.0.0.1:1/other", pool="other")
    engine = reg.validate()
    assert engine.schema(There).mysql_pool == "other"


def test_stream_fed_from_two_redis_pools() -> None:
    """One stream fed by entities on different Redis pools is a SchemaError."""

    @dataclass
    class OnDefault:
        id: int = field(default=0, metadata={"orm": "dirty=Shared"})

    @fluxaorm.entity(redis_pool="other")
    @dataclass
    class OnOther:
        id: int = 0
        name: str = field(default="", metadata={"orm": "dirty=Shared"})

    err = schema_error(registry(OnDefault, OnOther, redis_pools=("default", "other")))
    assert err.entity == OnOther.__qualname__
    assert "dirty stream 'Shared' is fed from Redis pool 'other' here" in str(err)
    assert f"but from 'default' by {OnDefault.__qualname__}" in str(err)


def test_shared_stream_on_one_pool() -> None:
    """Several entities may feed one stream on the same pool; sources list each."""

    @dataclass
    class Feeder1:
        id: int = field(default=0, metadata={"orm": "dirty=Shared:add"})

    @dataclass
    class Feeder2:
        id: int = 0
        name: str = field(default="", metadata={"orm": "dirty=Shared"})

    engine = registry(Feeder1, Feeder2).validate()
    assert engine.streams == ("Shared",)
    assert dict(engine.stream("Shared").sources) == {
        f"{__name__}.{Feeder1.__qualname__}": ("add",),
        f"{__name__}.{Feeder2.__qualname__}": ("field:name",),
    }


def test_two_classes_with_one_name() -> None:
    """Two registered classes with the same module and qualified name are a SchemaError."""

    def make(table: str) -> type:
        @fluxaorm.entity(table=table)
        @dataclass
        class Twin:
            id: int = 0

        return Twin

    err = schema_error(registry(make("a"), make("b")))
    assert "two registered classes are named" in str(err)


def test_entity_errors_surface_from_validate() -> None:
    """validate() raises the schema's SchemaError for an invalid entity."""

    @dataclass
    class Broken:
        name: str = ""

    assert "has no id field" in str(schema_error(registry(Broken)))


def test_non_class_surfaces_from_validate() -> None:
    """Registering an instance shows in the repr and fails validate() with a SchemaError."""
    reg = registry(UserEntity())  # type: ignore[arg-type]
    assert "UserEntity(id=0" in repr(reg)
    assert "is not a class" in str(schema_error(reg))


# -- registration -----------------------------------------------------------------------------------


def test_register_entity_twice_keeps_one() -> None:
    """Registering an entity twice registers it once."""
    reg = registry(UserEntity, UserEntity)
    reg.register_entity(UserEntity)
    assert reg.validate().entities == (UserEntity,)


def test_pool_registered_twice() -> None:
    """Registering a pool name twice is a ConfigurationError."""
    reg = fluxaorm.Registry()
    reg.register_mysql(CLOSED_MYSQL)
    reg.register_redis(CLOSED_REDIS)
    with pytest.raises(
        fluxaorm.ConfigurationError, match="MySQL pool 'default' is already registered"
    ):
        reg.register_mysql(CLOSED_MYSQL)
    with pytest.raises(
        fluxaorm.ConfigurationError, match="Redis pool 'default' is already registered"
    ):
        reg.register_redis(CLOSED_REDIS)
    reg.register_mysql(CLOSED_MYSQL, pool="second")
    reg.register_redis(CLOSED_REDIS, pool="second")


def test_negative_relay_delay() -> None:
    """A negative outbox_relay_delay is a ConfigurationError."""
    with pytest.raises(fluxaorm.ConfigurationError, match="outbox_relay_delay"):
        fluxaorm.Registry(outbox_relay_delay=-1)


def test_registry_options_reach_the_engine() -> None:
    """outbox and outbox_relay_delay are handed to the engine."""
    reg = fluxaorm.Registry(outbox=False, outbox_relay_delay=2)
    engine = reg.validate()
    assert engine.outbox is False
    assert engine.relay_delay == 2.0
    assert fluxaorm.Registry().validate().outbox is True


def test_reprs() -> None:
    """Registry and Engine reprs name the pools and entities."""
    reg = registry(UserEntity, CategoryEntity)
    assert repr(reg) == (
        "<Registry mysql=[MySQLConfig(pool='default', url='mysql://root@127.0.0.1:1/test')] "
        "redis=[RedisConfig(pool='default', url='redis://127.0.0.1:1/15')] "
        "entities=['UserEntity', 'CategoryEntity']>"
    )
    assert repr(reg.validate()) == (
        "<Engine entities=2 mysql=['default'] redis=['default'] streams=5>"
    )


def test_engine_pool_lookups() -> None:
    """Unknown pool names are ConfigurationErrors listing the registered pools."""
    engine = registry(UserEntity).validate()
    assert engine.mysql_pool("default").name == "default"
    assert engine.redis_pool("default").name == "default"
    with pytest.raises(fluxaorm.ConfigurationError, match="registered: default"):
        engine.mysql_pool("nope")
    with pytest.raises(fluxaorm.ConfigurationError, match="registered: default"):
        engine.redis_pool("nope")


def test_bad_redis_url_option_fails_validate() -> None:
    """A Redis URL option redis-py refuses is a ConfigurationError from validate()."""
    reg = fluxaorm.Registry()
    reg.register_redis("redis://127.0.0.1:1/0?socket_timeout=abc")
    with pytest.raises(fluxaorm.ConfigurationError, match="socket_timeout"):
        reg.validate()


def test_two_entities_given_one_name() -> None:
    """Two entities given the same name= are a SchemaError naming both and the fix."""

    @fluxaorm.entity(table="a", name="shop.Thing")
    @dataclass
    class First:
        id: int = 0

    @fluxaorm.entity(table="b", name="shop.Thing")
    @dataclass
    class Second:
        id: int = 0

    err = schema_error(registry(First, Second))
    assert err.entity == Second.__qualname__
    assert "two registered classes are named 'shop.Thing'" in str(err)
    assert First.__qualname__ in str(err)
    assert '@fluxaorm.entity(name="...")' in str(err)


def test_entity_in_main_without_name_warns(caplog: pytest.LogCaptureFixture) -> None:
    """validate() logs a WARNING for an entity defined in __main__ without name=."""

    @dataclass
    class Script:
        id: int = 0

    @fluxaorm.entity(name="script.Named", table="named")
    @dataclass
    class ScriptNamed:
        id: int = 0

    Script.__module__ = ScriptNamed.__module__ = "__main__"
    with caplog.at_level("WARNING", logger="fluxaorm"):
        engine = registry(Script, ScriptNamed).validate()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "Script is defined in __main__ without a name" in warnings[0].getMessage()
    assert "another process" in warnings[0].getMessage()
    assert engine.schema(ScriptNamed).name == "script.Named"


def test_entity_name_reaches_the_engine() -> None:
    """The engine finds an entity by its name= (what consumers match events against)."""

    @fluxaorm.entity(name="shop.Order")
    @dataclass
    class Order:
        id: int = field(default=0, metadata={"orm": "dirty=Orders"})

    engine = registry(Order).validate()
    assert engine.schema_by_name("shop.Order") is engine.schema(Order)
    assert engine.stream("Orders").sources == (
        ("shop.Order", ("add", "edit", "delete")),
    )
