// GraphQL operations of the chat API. Every root field needs a valid access token (AuthGuard);
// over WebSocket the token is checked once at connection_init (chat.module.ts).
import { UseGuards } from '@nestjs/common';
import { Args, ID, Int, Mutation, Parent, Query, ResolveField, Resolver, Subscription } from '@nestjs/graphql';
import { AuthGuard, AuthUser, CurrentUser } from '../auth/auth.guard';
import { Chat, ChatMember, CreateChatInput, Message, MessageConnection, SendMessageInput } from './chat.types';
import { messageAddedChannel } from './chat.bus';
import { ChatService } from './chat.service';

@Resolver(() => Chat)
@UseGuards(AuthGuard)
export class ChatResolver {
  constructor(private readonly svc: ChatService) {}

  @Query(() => [Chat], { description: "The caller's chats, newest activity first." })
  chats(@CurrentUser() me: AuthUser) {
    return this.svc.chats(me.id);
  }

  @Query(() => Chat)
  chat(@CurrentUser() me: AuthUser, @Args('id', { type: () => ID }) id: string) {
    return this.svc.chat(id, me.id);
  }

  @Query(() => MessageConnection, { description: 'Newest first; `after` is the endCursor of the previous page.' })
  messages(
    @CurrentUser() me: AuthUser,
    @Args('chatId', { type: () => ID }) chatId: string,
    @Args('first', { type: () => Int, defaultValue: 50 }) first: number,
    @Args('after', { type: () => String, nullable: true }) after?: string | null,
  ) {
    return this.svc.messages(chatId, me.id, first, after);
  }

  @Mutation(() => Chat)
  createChat(@CurrentUser() me: AuthUser, @Args('input') input: CreateChatInput) {
    return this.svc.createChat(me.id, input);
  }

  @Mutation(() => Message)
  sendMessage(@CurrentUser() me: AuthUser, @Args('input') input: SendMessageInput) {
    return this.svc.sendMessage(me.id, input);
  }

  @Mutation(() => Message)
  editMessage(@CurrentUser() me: AuthUser, @Args('id', { type: () => ID }) id: string, @Args('body') body: string) {
    return this.svc.editMessage(me.id, id, body);
  }

  @Mutation(() => Message)
  deleteMessage(@CurrentUser() me: AuthUser, @Args('id', { type: () => ID }) id: string) {
    return this.svc.deleteMessage(me.id, id);
  }

  @Mutation(() => Chat)
  markRead(
    @CurrentUser() me: AuthUser,
    @Args('chatId', { type: () => ID }) chatId: string,
    @Args('messageId', { type: () => ID }) messageId: string,
  ) {
    return this.svc.markRead(me.id, chatId, messageId);
  }

  /** Messages sent to one chat after subscribing; only members may subscribe. */
  @Subscription(() => Message, {
    filter: (payload: { messageAdded: Message }, variables: { chatId: string }) => payload.messageAdded.chatId === variables.chatId,
  })
  async messageAdded(@CurrentUser() me: AuthUser, @Args('chatId', { type: () => ID }) chatId: string) {
    await this.svc.requireMember(chatId, me.id);
    return this.svc.bus.asyncIterableIterator(messageAddedChannel(chatId));
  }

  @ResolveField(() => [ChatMember])
  members(@Parent() chat: Chat) {
    return this.svc.members(chat.id);
  }

  @ResolveField(() => Message, { nullable: true })
  lastMessage(@Parent() chat: Chat) {
    return this.svc.lastMessage(chat.id);
  }

  @ResolveField(() => Int)
  unreadCount(@Parent() chat: Chat, @CurrentUser() me: AuthUser) {
    return this.svc.unreadCount(chat.id, me.id);
  }
}
