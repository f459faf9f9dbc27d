"""Online serving: the item index that answers similarity queries while items change."""
