from models.errors import UserError

__all__ = ["UserError"]
