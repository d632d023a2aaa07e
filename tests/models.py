"""Entities shared by the tests: the SPEC's example and one field of every type."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from decimal import Decimal

import attrs

import fluxaorm


@dataclass
class UserEntity:
    id: int = field(
        default=0,
        metadata={
            "orm": "dirty=AllChanges,NewUsers:add,DeletedUsers:delete,EmailAddedOrChanged:add"
        },
    )
    name: str = fluxaorm.column(length=100, default="")
    email: str = field(default="", metadata={"orm": "dirty=EmailAddedOrChanged"})


@dataclass
class CategoryEntity:
    id: int = field(
        default=0, metadata={"orm": "dirty=AllChanges,CategoryAddedDeleted:add|delete"}
    )
    code: str = ""


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@fluxaorm.entity(table="all_types")
@dataclass
class AllTypes:
    """One field of every supported type, plus nullable twins."""

    id: int = field(default=0, metadata={"orm": "dirty=AllTypesStream"})
    i64: int = 0
    i32: int = fluxaorm.column(default=0, size=32)
    u8: int = fluxaorm.column(default=0, size=8, unsigned=True)
    flag: bool = False
    ratio: float = 0.0
    name: str = fluxaorm.column(default="", length=50)
    text: str = fluxaorm.column(default="", length="max")
    blob: bytes = b""
    amount: Decimal = fluxaorm.column(default=Decimal("0"), precision=12, scale=4)
    at: datetime.datetime = datetime.datetime(2000, 1, 1)
    day: datetime.date = datetime.date(2000, 1, 1)
    color: Color = Color.RED
    level: Level = Level.LOW
    opt_int: int | None = None
    opt_str: str | None = None
    opt_amount: Decimal | None = None
    opt_at: datetime.datetime | None = None
    opt_day: datetime.date | None = None
    opt_color: Color | None = None
    opt_blob: bytes | None = None
    opt_flag: bool | None = None
    opt_ratio: float | None = None


@fluxaorm.entity(table="products")
@attrs.define
class ProductEntity:
    """An attrs entity with named and multi-column indexes and fake delete."""

    id: int = attrs.field(default=0, metadata={"orm": "dirty=Products"})
    sku: str = attrs.field(
        default="", metadata={"orm": {"unique": "sku_idx", "length": 32}}
    )
    shop: int = attrs.field(default=0, metadata={"orm": "index=shop_price:1"})
    price: Decimal = attrs.field(
        default=Decimal("0"),
        metadata={"orm": "index=shop_price:2;precision=10;scale=2"},
    )
    fake_delete: bool = False
