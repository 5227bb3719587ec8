from service.core import tables
from service.core.queries.owned import Owned
from service.core.schemas import ItemPublic

items = Owned(tables.items, ItemPublic)
