from service import tables
from service.queries.owned import Owned
from service.schemas import ItemPublic

items = Owned(tables.items, ItemPublic)
