"""Admin for conversations and messages."""

from django.contrib import admin

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ("role", "status", "text", "chunks", "instance", "created_at", "finished_at")
    readonly_fields = fields
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner_key", "owner_user", "updated_at")
    search_fields = ("id", "title", "owner_key")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "status", "chunks", "instance", "created_at")
    list_filter = ("status", "role", "instance")
    search_fields = ("id", "text")
    readonly_fields = ("created_at", "finished_at")
